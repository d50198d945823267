"""Best-of-n: picks the argmax of each group, reports log n - (n-1)/n, rejection-sampling SFT runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.algorithms import bon


@pytest.mark.parametrize("n,kl", [(1, 0.0), (2, math.log(2) - 0.5), (4, math.log(4) - 0.75),
                                  (16, math.log(16) - 15 / 16)])
def test_analytic_kl(n, kl):
    assert bon.analytic_kl(n) == pytest.approx(kl, abs=1e-12)


def test_best_of_is_groupwise_argmax():
    scores = torch.tensor([0.1, 0.9, 0.3, 5.0, -1.0, 2.0])
    assert bon.best_of(scores, 3).tolist() == [1, 0]
    assert bon.best_of(scores, 2).tolist() == [1, 1, 1]


def test_expected_best_of_n_by_hand():
    """Selector (3, 1, 2), values (10, 20, 30), n = 2. The three subsets: {0, 1} picks 0 (10), {0, 2} picks 0 (10),
    {1, 2} picks 2 (30): (10 + 10 + 30) / 3 = 16.667. n = 1 is the plain mean (20); n = 3 the selector's best (10).
    Second prompt: a tie in the selector (5, 5, 0) goes to the earlier sample: n = 3 gives values[0] = 1."""
    sel = torch.tensor([[3.0, 1.0, 2.0], [5.0, 5.0, 0.0]])
    val = torch.tensor([[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]])
    assert bon.expected_best_of_n(sel, val, 2)[0].item() == pytest.approx(50 / 3, abs=1e-12)
    assert bon.expected_best_of_n(sel, val, 1).tolist() == pytest.approx([20.0, 2.0], abs=1e-12)
    assert bon.expected_best_of_n(sel, val, 3).tolist() == pytest.approx([10.0, 1.0], abs=1e-12)
    with pytest.raises(ValueError):
        bon.expected_best_of_n(sel, val, 4)


def test_expected_best_of_n_equals_enumerating_every_subset():
    """The closed form against the definition: the mean, over all C(N, n) subsets, of the value of each subset's
    highest-selector sample (continuous random scores, so no ties)."""
    import itertools

    g = torch.Generator().manual_seed(0)
    sel, val = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    for n in range(1, 8):
        brute = [sum(val[p, max(s, key=lambda j: sel[p, j])].item() for s in itertools.combinations(range(7), n))
                 / math.comb(7, n) for p in range(3)]
        assert bon.expected_best_of_n(sel, val, n).tolist() == pytest.approx(brute, abs=1e-9)


def test_run_writes_best_rows_and_finetunes(toy_dir, tmp_path):
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()][:6]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"], "id": i} for i, r in enumerate(rows)])
    cfg = bon.Config(model=str(toy_dir / "model"), prompts=str(prompts), n=4, max_new_tokens=8,
                     reward_model=["tests.bon_reward:count_digits"], output_dir=str(tmp_path / "bon"),
                     finetune=True, finetune_steps=2)
    import sys
    import types

    mod = types.ModuleType("tests.bon_reward")  # a module:function reward, as a user would pass it
    mod.count_digits = lambda ps, rs: [float(sum(c.isdigit() for c in r)) for r in rs]
    sys.modules["tests.bon_reward"] = mod
    try:
        bon.run(cfg)
    finally:
        del sys.modules["tests.bon_reward"]
    out = [json.loads(x) for x in (tmp_path / "bon" / "bon.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == list(range(6)) and all(r["n"] == 4 for r in out)
    for r in out:
        text = r["completion"][0]["content"]  # conversational prompt -> conversational completion
        assert r["score"] == float(sum(c.isdigit() for c in text))
        assert r["score"] >= r["mean_score"]
    summary = json.loads((tmp_path / "bon" / "summary.json").read_text())
    assert summary["kl_analytic"] == pytest.approx(math.log(4) - 0.75)
    assert summary["best_score"] >= summary["sample_score"]
    assert (tmp_path / "bon" / "sft" / "model.safetensors").exists()
