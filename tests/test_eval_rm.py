"""`rlhfkit eval-rm`: accuracy, calibration and the verbosity probe on hand-made sets whose answers are worked out
by hand; the world ceiling next to the accuracy."""

import json
import math
import random

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.diagnostics import eval_rm, metrics
from rlhfkit.world import WorldConfig, ceiling, default_annotators, heldout_prompts, respond
from rlhfkit.world import label as world_label

L3, L9 = math.log(3), math.log(9)


def table_reward(table):
    def fn(prompts, responses):
        return {"score": torch.tensor([table[r] for r in responses], dtype=torch.float32)}
    return fn


def hand_set():
    """Four pairs with r_c - r_r = ln3, ln3, ln9, -ln3 -> sigmoid = 3/4, 3/4, 9/10, 1/4, and one tie row.

    accuracy = 3/4 (the tie row is excluded).
    ECE, both orientations (8 items): bin [.7,.8): p = .75 x3, labels 1,1,0 -> |.75 - 2/3| = 1/12, weight 3/8;
    bin [.2,.3): p = .25 x3, labels 0,0,1 -> 1/12, weight 3/8; p = .9 (label 1) and p = .1 (label 0) sit alone in
    their bins -> gap .1, weight 1/8 each. ECE = 2 * 3/8 * 1/12 + 2 * 1/8 * 1/10 = 1/16 + 1/40 = 0.0875.
    Lengths (words): len_c - len_r = 1, 1, 2, -1 = d / ln3 exactly -> Pearson = Spearman = 1; the chosen one is
    longer in 3 of 4 pairs (label_prefers_longer = 3/4), the RM prefers the longer one in all 4.
    """
    diffs, dlen = [L3, L3, L9, -L3], [1, 1, 2, -1]
    rows, table = [], {}
    for i, (d, dl) in enumerate(zip(diffs, dlen)):
        c, r = " ".join([f"c{i}"] * (2 + dl)), " ".join([f"r{i}"] * 2)
        table[c], table[r] = 0.5 + d, 0.5
        rows.append({"prompt": f"q{i}", "chosen": c, "rejected": r, "source": "a" if i < 2 else "b"})
    rows.append({"prompt": "q", "chosen": "t1", "rejected": "t2", "tie": True})
    table.update(t1=5.0, t2=-5.0)
    return rows, table


def test_hand_worked_accuracy_ece_and_length_probe():
    rows, table = hand_set()
    cfg = eval_rm.Config(reward="x", data="y", world=False)
    res = eval_rm.evaluate(table_reward(table), rows, cfg)
    assert res["n_pairs"] == 4 and res["n_ties_excluded"] == 1
    assert res["accuracy"] == pytest.approx(0.75)
    assert res["ece"] == pytest.approx(0.0875, abs=1e-6)
    assert res["per_source"] == {"a": {"accuracy": 1.0, "n_pairs": 2}, "b": {"accuracy": 0.5, "n_pairs": 2}}
    assert res["length_correlation"] == pytest.approx(1.0) and res["length_spearman"] == pytest.approx(1.0)
    assert res["label_prefers_longer"] == pytest.approx(0.75) and res["rm_prefers_longer"] == 1.0
    assert res["ceiling"] is None


def test_ece_limits_and_rank_correlation():
    # a perfectly calibrated set: d = ln3 (p = 3/4), chosen wins 3 of 4 -> ECE 0 ... in both orientations
    assert eval_rm.ece(torch.tensor([L3, L3, L3, -L3], dtype=torch.float64)) == pytest.approx(0.0, abs=1e-9)
    # all d = 0 (p = 1/2 everywhere) is calibrated for any labels under both orientations
    assert eval_rm.ece(torch.zeros(5)) == pytest.approx(0.0)
    # overconfident: d = 100 but only half right -> ECE = 1/2
    assert eval_rm.ece(torch.tensor([100.0, -100.0])) == pytest.approx(0.5)
    # Spearman by hand: ranks (1,2,3,4) vs (1,3,2,4): 1 - 6 * 2 / (4 * 15) = 0.8; Pearson of those values too
    x, y = torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 30, 20, 40])
    assert eval_rm.spearman(x, y) == pytest.approx(0.8) and eval_rm.pearson(x, y / 10) == pytest.approx(0.8)
    assert metrics.ranks([5.0, 1, 5, 2]) == [3.5, 1, 3.5, 2]  # average ranks for ties (shared with rlhfkit eval)
    assert eval_rm.pairwise_accuracy(torch.tensor([1.0, 0.0, -1.0, 2.0])) == pytest.approx(2.5 / 4)


def test_world_ceiling_next_to_accuracy(tmp_path):
    prompts = [r["prompt"] for r in heldout_prompts(WorldConfig(n_heldout_prompts=40))]
    rng = random.Random(0)
    cands = []
    for p in prompts:
        text = p[-1]["content"]
        cands.append({"prompt": p, "responses": [respond(text, s, rng) for s in ("good", "padded", "repetitive", "good")]})
    prefs, _ = world_label.label_rows(cands, world_label.Config(seed=1))
    write_jsonl(tmp_path / "prefs.jsonl", prefs)
    res = eval_rm.run(eval_rm.Config(reward="rlhfkit.world:gold_reward", data=str(tmp_path / "prefs.jsonl"),
                                     output=str(tmp_path / "out.json")))
    items = [(r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in prefs]
    anns = [a for a in default_annotators() if a.name in {r["annotator"] for r in prefs}]
    assert res["ceiling"] == pytest.approx(ceiling(items, anns))
    assert res["world_pairs"] == res["n_pairs"] == len(prefs) and 0.5 < res["ceiling"] <= 1
    assert res["accuracy_over_ceiling"] == pytest.approx(res["accuracy"] / res["ceiling"])
    assert res["label_prefers_longer"] > 0.5  # the annotators' verbosity bias, visible in the labels
    assert res["length_unit"] == "words"  # a function reward has no tokenizer
    assert json.loads((tmp_path / "out.json").read_text())["accuracy"] == res["accuracy"]
