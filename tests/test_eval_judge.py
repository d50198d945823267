"""`rlhfkit eval --judge`: LLM-as-judge win rates against the reference policy, paired by prompt, with the judge's
consistency, first-position preference and agreement with gold on the same pairs."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from rlhfkit.cai.judges import Judge
from rlhfkit.diagnostics import evaluate as E


class LengthJudge(Judge):
    """P(first better) = 0.5 + 0.1 * (len(first) - len(second)) + bias, clipped to [0, 1]."""

    name = "length"

    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.bias = bias

    def compare_ordered(self, prompts, first, second):
        return [min(1.0, max(0.0, 0.5 + 0.1 * (len(x) - len(y)) + self.bias)) for x, y in zip(first, second)]


def _samples(responses: list[str], golds: list[float], prompts: list[str]) -> list[dict]:
    return [{"prompt": p, "response": r, "scores": {"gold": g}} for p, r, g in zip(prompts, responses, golds)]


def test_judge_win_rate_hand_worked():
    """Three pairs, the judge with a first-position bias of 0.2 (P(a) per order as in test_judge):
      "aaa" vs "b":    forward 0.9, swapped 0.5 -> p 0.7 (win);    winners (a, tie): inconsistent
      "a" vs "b":      forward 0.7, swapped 0.3 -> p 0.5 (tie);    winners (a, b): inconsistent
      "aaaaaa" vs "b": forward 1.0, swapped 0.8 -> p 0.9 (win);    consistent
    win rate (2 + 0.5) / 3 = 5/6; mean_p (0.7 + 0.5 + 0.9) / 3 = 0.7; consistency 1/3.
    first position: mean of P(first wins) over both orders = mean(0.9, 0.7, 1.0, 1-0.5, 1-0.3, 1-0.8)
      = (0.9 + 0.7 + 1.0 + 0.5 + 0.7 + 0.2) / 6 = 4.0 / 6 = 2/3 (above 0.5: the bias shows).
    gold: A's gold - B's gold = (+1, -1, 0): the third pair is a gold tie and left out; pair 1 the judge agrees
      (win, gold +), pair 2 is a judge tie (half) -> gold_agreement (1 + 0.5) / 2 = 0.75 over 2 pairs.
    B's samples are given in another order and A's prompts repeat: pairing is by prompt and occurrence."""
    a = _samples(["aaa", "a", "aaaaaa"], [1.0, 0.0, 0.5], ["p", "q", "p"])
    b = _samples(["b", "b", "b"], [1.0, 0.0, 0.5], ["q", "p", "p"])
    b[1]["scores"]["gold"], b[0]["scores"]["gold"] = 0.0, 1.0  # B on p (1st): 0.0, on q: 1.0
    wr = E.judge_win_rate(LengthJudge(0.2), a, b)
    assert wr["mean"] == pytest.approx(5 / 6) and (wr["wins"], wr["ties"], wr["losses"], wr["n"]) == (2, 1, 0, 3)
    assert wr["low"] < 5 / 6 < wr["high"]
    assert wr["mean_p"] == pytest.approx(0.7)
    assert wr["consistency"] == pytest.approx(1 / 3)
    assert wr["first_position"] == pytest.approx(2 / 3)
    assert wr["gold_agreement"] == pytest.approx(0.75) and wr["gold_pairs"] == 2
    assert wr["judge"] == "length"
    one = E.judge_win_rate(LengthJudge(0.0), a, b, swap=False)  # no swap: one order, no consistency reported
    assert one["mean_p"] == pytest.approx((0.7 + 0.5 + 1.0) / 3) and "consistency" not in one  # 1.0: clipped
    with pytest.raises(ValueError, match="share no prompts"):
        E.judge_win_rate(LengthJudge(), a, _samples(["b"], [0.0], ["other"]))


def _world_files(tmp_path, n=16):
    from rlhfkit.world import WorldConfig, heldout_prompts, ideal_response, respond

    rows = heldout_prompts(WorldConfig(n_heldout_prompts=n))
    rng = random.Random(0)
    good = [{"prompt": r["prompt"], "completion": ideal_response(r["prompt"][0]["content"])} for r in rows]
    padded = [{"prompt": r["prompt"], "completion": respond(r["prompt"][0]["content"], "padded", rng)} for r in rows]
    for name, data in (("good", good), ("padded", padded)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in data))
    return len(rows)


def test_eval_run_with_the_rule_judge_on_world_samples(tmp_path):
    """Ideal world answers against padded ones: the rule-based judge prefers the ideal answer on every prompt, in
    both orders (consistency 1, no position preference), and agrees with gold on every pair gold separates."""
    n = _world_files(tmp_path)
    cfg = E.Config(policies=[f"good={tmp_path / 'good.jsonl'}", f"padded={tmp_path / 'padded.jsonl'}"],
                   gold=E.WORLD_GOLD, reference="padded", judge="rule", output=str(tmp_path / "eval.json"))
    out = E.run(cfg)
    wr = json.loads((tmp_path / "eval.json").read_text())["policies"]["good"]["judge_win_rate_vs_padded"]
    assert wr == out["policies"]["good"]["judge_win_rate_vs_padded"]
    assert (wr["wins"], wr["n"], wr["judge"]) == (n, n, "rule")
    assert wr["consistency"] == 1.0 and wr["first_position"] == pytest.approx(0.5)
    assert wr["gold_agreement"] == 1.0 and wr["gold_pairs"] == n
    assert out["policies"]["good"]["win_rate_vs_padded"]["mean"] == 1.0  # the gold win rate beside it
    assert "judge_win_rate_vs_padded" not in out["policies"]["padded"]


def test_eval_judge_needs_a_reference_and_a_known_judge(tmp_path):
    _world_files(tmp_path, 4)
    base = [sys.executable, "-m", "rlhfkit.cli.main", "eval", "--policies", str(tmp_path / "good.jsonl"),
            "--output", str(tmp_path / "e.json")]
    r = subprocess.run(base + ["--judge", "rule"], capture_output=True, text=True)
    assert r.returncode == 2 and "--judge needs --reference" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["--judge", "oracle", "--reference", "good"], capture_output=True, text=True)
    assert r.returncode == 2 and "judge must be one of" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ValueError, match="--judge hf needs --judge-model"):
        E.Config(policies=["x"], reference="x", judge="hf").validate()
