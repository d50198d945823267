"""`world export` and `world label`: valid rows, TRL formats, determinism, ranking expansion, ties."""
import json
import random

import pytest

from rlhfkit.world import make_prompts, respond
from rlhfkit.world import export, label


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_export_writes_valid_files(tmp_path):
    cfg = export.Config(out_dir=str(tmp_path / "w"), seed=1, n_pretrain=50, n_sft=20, n_train_prompts=10,
                        n_heldout_prompts=8)
    res = export.run(cfg)
    assert res["files"] == {"pretrain.jsonl": 50, "sft.jsonl": 20, "train_prompts.jsonl": 10,
                            "heldout_prompts.jsonl": 8}
    d = tmp_path / "w"
    pre, sft = _read(d / "pretrain.jsonl"), _read(d / "sft.jsonl")
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in pre)
    assert all(r["prompt"][0]["role"] == "user" and r["completion"][0]["role"] == "assistant" for r in sft)
    held = _read(d / "heldout_prompts.jsonl")
    assert all(set(r) == {"prompt", "kind", "id"} for r in held)
    manifest = json.loads((d / "world.json").read_text())
    assert manifest["world"]["seed"] == 1 and manifest["files"]["sft.jsonl"]["rows"] == 20
    assert (d / "README.md").exists()
    assert not list(d.glob(".*tmp*"))  # no temp files left behind
    first = (d / "pretrain.jsonl").read_bytes()
    export.run(cfg)
    assert (d / "pretrain.jsonl").read_bytes() == first  # same seed, same bytes


def _candidates(path, n_prompts=12, k=4, conversational=False, seed=0):
    rng = random.Random(seed)
    rows = []
    for d in make_prompts(n_prompts, seed):
        p = d["prompt"]
        resp = [respond(p, "good", rng), respond(p, "padded", rng), respond(p, "repetitive", rng),
                respond(p, "over_refusal" if d["kind"] != "harmful" else "harmful_comply", rng)][:k]
        prompt = [{"role": "user", "content": p}] if conversational else p
        rows.append({"prompt": prompt, "responses": resp, "id": d["id"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.parametrize("conversational", [False, True])
def test_label_pairs_rows(tmp_path, conversational):
    cands = _candidates(tmp_path / "c.jsonl", conversational=conversational)
    cfg = label.Config(candidates=str(tmp_path / "c.jsonl"), out=str(tmp_path / "p.jsonl"), ties="keep")
    res = label.run(cfg)
    rows = _read(tmp_path / "p.jsonl")
    assert res["pairs"] == len(rows) == 2 * len(cands)  # K=4 -> 2 disjoint pairs each, ties kept
    for r in rows:
        assert {"prompt", "chosen", "rejected", "annotator", "choice", "tie", "group", "margin", "id"} <= set(r)
        assert r["choice"] in ("a", "b", "tie") and r["tie"] == (r["choice"] == "tie")
        assert r["prompt"] == cands[r["group"]]["prompt"]
        if conversational:
            assert r["chosen"][0]["role"] == "assistant" and isinstance(r["chosen"][0]["content"], str)
        else:
            assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
        assert 0.0 <= r["margin"] <= 1.0
    label.run(cfg)
    assert _read(tmp_path / "p.jsonl") == rows  # deterministic given the seed
    cfg2 = label.Config(candidates=cfg.candidates, out=str(tmp_path / "p2.jsonl"), ties="keep", seed=1)
    label.run(cfg2)
    assert _read(tmp_path / "p2.jsonl") != rows


def test_label_ranking_expands_all_pairs(tmp_path):
    cands = _candidates(tmp_path / "c.jsonl", k=4)
    rows = {}
    for ties in ("keep", "drop"):
        res = label.run(label.Config(candidates=str(tmp_path / "c.jsonl"), out=str(tmp_path / f"{ties}.jsonl"),
                                     mode="ranking", ties=ties))
        rows[ties] = _read(tmp_path / f"{ties}.jsonl")
        assert res["pairs"] == len(rows[ties])
    by_group = {}
    for r in rows["keep"]:
        by_group.setdefault(r["group"], []).append(r)
    assert len(by_group) == len(cands) and all(len(v) == 4 * 3 // 2 for v in by_group.values())
    assert all(len({r["annotator"] for r in v}) == 1 for v in by_group.values())  # one ranker per prompt
    assert all(len({(r["chosen"], r["rejected"]) for r in v}) == 6 for v in by_group.values())
    # dropping ties removes exactly the tie rows, nothing else (same seed -> same draws)
    assert [r for r in rows["keep"] if not r["tie"]] == rows["drop"]
    assert res["ties"] == sum(r["tie"] for r in rows["keep"]) < len(rows["keep"]) // 4


def test_label_ties_drop_vs_keep(tmp_path):
    p = make_prompts(1, 0)[0]["prompt"]
    same = respond(p, "good", random.Random(0))
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": p, "responses": [same, same, same]}) + "\n")
    keep = label.run(label.Config(candidates=str(tmp_path / "c.jsonl"), out=str(tmp_path / "k.jsonl"),
                                  mode="ranking", ties="keep"))
    drop = label.run(label.Config(candidates=str(tmp_path / "c.jsonl"), out=str(tmp_path / "d.jsonl"),
                                  mode="ranking", ties="drop"))
    assert keep["pairs"] == 3 and all(r["tie"] for r in _read(tmp_path / "k.jsonl"))
    assert drop["pairs"] == 0 and drop["ties_dropped"] == 3 and _read(tmp_path / "d.jsonl") == []


def test_ranking_pair_marginals_match_bradley_terry():
    """Plackett-Luce by Gumbel-max: P(i above j) = sigmoid((u_i - u_j) / T), lapses on top (4 sigma)."""
    import math
    from rlhfkit.world import default_annotators, outcome_probs
    ann = default_annotators()[0]
    p = "What is 3 plus 4?"
    resp = ["3 plus 4 is 7.", "Great question! 3 plus 4 is 7. I hope this helps!", "3 plus 4 is 9."]
    rows, _ = label.label_rows([{"prompt": p, "responses": resp}] * 3000,
                               label.Config(mode="ranking", annotators=["careful"]))
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        got = [r["chosen"] == resp[i] for r in rows if {r["chosen"], r["rejected"]} == {resp[i], resp[j]}]
        pa = outcome_probs(ann, p, resp[i], resp[j])["a"]
        assert abs(sum(got) - len(got) * pa) <= 4 * math.sqrt(len(got) * pa * (1 - pa)), (i, j)


def test_label_config_validation():
    with pytest.raises(ValueError):
        label.Config(mode="triples")
    with pytest.raises(ValueError):
        label.Config(annotators=["nobody"]).annotator_pool()
