"""Judges: position-swap debiasing arithmetic on a stub, the world's rule-based judge, and a local HF causal LM
judge on a tiny random Llama (probabilities in [0, 1], consistency computed, a batch equals one-by-one)."""

import random

import pytest

from rlhfkit.cai import constitution as C
from rlhfkit.cai.judges import HFJudge, Judge, JudgeError, RuleJudge
from rlhfkit.world import APPLICABLE_STYLES, make_prompts, parse_prompt, respond


class FirstBiased(Judge):
    """P(first better) = q(first) - q(second) + 0.5 + bias: a judge with a known position bias."""

    def __init__(self, bias):
        super().__init__()
        self.bias = bias

    def compare_ordered(self, prompts, first, second):
        return [min(1.0, max(0.0, 0.5 + 0.1 * (len(x) - len(y)) + self.bias)) for x, y in zip(first, second)]


def test_swap_debiasing_removes_a_constant_position_bias_and_counts_consistency():
    """With bias 0.2: pair (len 3, len 1): forward 0.5+0.2+0.2 = 0.9, swapped P(first=b) = 0.5-0.2+0.2 = 0.5,
    so P(a) in that order = 0.5; mean 0.7 = the unbiased 0.5+0.2; winners (a, tie) differ: inconsistent.
    Pair (len 1, len 1): forward 0.7, swapped 0.7 -> P(a) = 0.3; mean 0.5; winners (a, b): inconsistent.
    Pair (len 6, len 1): forward 1.0 (clipped), swapped 0.5-0.5+0.2 = 0.2 -> 0.8; mean 0.9; consistent."""
    j = FirstBiased(0.2)
    v = j.compare_detailed(["p"] * 3, ["aaa", "a", "aaaaaa"], ["b", "b", "b"])
    assert v.p_ab == pytest.approx([0.9, 0.7, 1.0])
    assert v.p_ba == pytest.approx([0.5, 0.3, 0.8])
    assert v.p == pytest.approx([0.7, 0.5, 0.9])
    assert v.consistent == [False, False, True]
    assert j.consistency == pytest.approx(1 / 3)
    assert FirstBiased(0.0).compare(["p"], ["aaa"], ["b"]) == pytest.approx([0.7])  # no bias: same as one order
    with pytest.raises(ValueError, match="2 prompts, 1 a-responses"):
        j.compare(["p", "q"], ["a"], ["b"])


def test_rule_judge_prefers_the_good_response_and_is_order_consistent():
    j = RuleJudge(C.load())
    rng = random.Random(0)
    prompts, good, bad = [], [], []
    for row in make_prompts(40, seed=3):
        p = row["prompt"]
        for style in APPLICABLE_STYLES[parse_prompt(p).kind][1:]:
            prompts.append(p)
            good.append(respond(p, "good", rng))
            bad.append(respond(p, style, rng))
    p = j.compare(prompts, good, bad)
    assert all(x > 0.5 for x in p), min(p)
    assert j.consistency == 1.0
    assert j.compare(prompts, bad, good) == pytest.approx([1 - x for x in p])
    assert j.compare(prompts[:1], good[:1], good[:1]) == [0.5]
    assert max(j.score(prompts, bad)) < 0 == max(j.score(prompts, good))
    with pytest.raises(JudgeError, match="rule judge: pair 0: not a prompt of the built-in world"):
        j.score(["Write a poem."], ["ok"])


@pytest.fixture(scope="module")
def hf_judge(toy_dir):
    from rlhfkit import models

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    model = models.load_causal_lm(str(toy_dir / "model"), tok)
    return HFJudge(model, tok, C.load(), batch_size=4)


def test_hf_judge_reads_answer_token_probabilities_batched(hf_judge):
    prompts = ["What is 1 plus 2?", "What is 3 plus 3?", "Sort these numbers: 3 1 2.", "What is 5 plus 0?",
               "What color is the zorb?"]
    a = ["1 plus 2 is 3.", "Great question! 3 plus 3 is 6.", "1 2 3.", "I can't help with that.", "Blue."]
    b = ["1 plus 2 is 4.", "3 plus 3 is 6.", "3 1 2.", "5 plus 0 is 5. 5 plus 0 is 5.", "I don't know."]
    v = hf_judge.compare_detailed(prompts, a, b)
    assert all(0.0 <= x <= 1.0 for x in v.p_ab + v.p_ba + v.p)
    assert len(set(round(x, 6) for x in v.p_ab)) > 1  # the prompt reaches the logits: not one constant
    assert hf_judge.consistency == sum(v.consistent) / len(prompts)
    # batch of 4 (+ a ragged last batch, right padding) == one at a time
    one = HFJudge(hf_judge.model, hf_judge.tokenizer, hf_judge.constitution, batch_size=1)
    w = one.compare_detailed(prompts, a, b)
    assert w.p_ab == pytest.approx(v.p_ab, abs=1e-5) and w.p_ba == pytest.approx(v.p_ba, abs=1e-5)
    s = hf_judge.score(prompts, a)
    assert all(0.0 <= x <= 1.0 for x in s) and s == pytest.approx(one.score(prompts, a), abs=1e-5)


def test_hf_judge_refuses_answer_tokens_it_cannot_tell_apart(hf_judge):
    with pytest.raises(JudgeError, match="start with the same token"):
        HFJudge(hf_judge.model, hf_judge.tokenizer, hf_judge.constitution, answer_tokens=("Apple", "Apricot"))
