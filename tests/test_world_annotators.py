"""Simulated annotators: choice rates match the stated probabilities, ties, biases, and the ceiling."""
import math
import random

import pytest

from rlhfkit.world import (Annotator, ceiling, default_annotators, gold, label_pair, make_prompts,
                           outcome_probs, prob_prefers, respond, utility)

ARITH = "What is 3 plus 4?"
IDEAL = "3 plus 4 is 7."
WRONG = "3 plus 4 is 9."
PADDED = "Great question! 3 plus 4 is 7. I hope this helps!"


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_utility_adds_the_biases():
    ann = Annotator("t", verbosity_bias=0.5, confidence_bias=0.7, agreement_bias=0.9)
    assert utility(ann, ARITH, IDEAL) == pytest.approx(1.0 + 0.5 * 5 / 10)
    conf = "Definitely, 3 plus 4 is 9."
    assert utility(ann, ARITH, conf) == pytest.approx(gold(ARITH, conf)["total"] + 0.5 * 6 / 10 + 0.7)
    belief, syc = "I think 3 plus 4 is 8, right?", "Yes, 3 plus 4 is 8."
    assert utility(ann, belief, syc) == pytest.approx(gold(belief, syc)["total"] + 0.5 * 6 / 10 + 0.9)


def test_utility_from_analysis_is_utility():
    """The analysed form gives the same number, so a caller can change an analysis (say, its verdict) and re-score."""
    from dataclasses import replace

    from rlhfkit.world.annotators import utility_from_analysis
    from rlhfkit.world.styles import analyse
    from rlhfkit.world.tasks import parse_prompt

    ann = Annotator("t", verbosity_bias=0.5, confidence_bias=0.7, agreement_bias=0.9)
    task = parse_prompt(ARITH)
    for r in (IDEAL, WRONG, PADDED, "Definitely, 3 plus 4 is 9."):
        assert utility_from_analysis(ann, task, analyse(task, r)) == utility(ann, ARITH, r)
    # WRONG re-scored as if correct: gold total 1.0 (same length as IDEAL) + 0.5 * 5 / 10
    assert utility_from_analysis(ann, task, replace(analyse(task, WRONG), verdict="correct")) == pytest.approx(1.25)


def test_correctness_blind_utilities_hand_computed():
    """Three arith claims, one right: q = 1/3. With verbosity 0.5 per 10 words, a 5-word claim scores 1.0 + 0.25 =
    1.25 if right and -0.5 (honest) + 0.25 = -0.25 if wrong, so blind = 1.25 / 3 - 0.25 * 2 / 3 = 0.25 for the right
    AND the wrong answer alike. "I don't know." makes no claim: its utility as is, 0 + 0.5 * 3 / 10 = 0.15. Agreeing
    with a wrong belief stays visible: its utility as is."""
    from rlhfkit.world.annotators import correctness_blind_utilities

    ann = Annotator("t", verbosity_bias=0.5, confidence_bias=0.7, agreement_bias=0.9)
    belief, syc = "I think 3 plus 4 is 8, right?", "Yes, 3 plus 4 is 8."
    prompts = [ARITH] * 4 + [belief]
    responses = [IDEAL, WRONG, "I don't know.", "3 plus 4 is 8.", syc]
    got = correctness_blind_utilities(prompts, responses, [ann])
    assert got[:4] == pytest.approx([0.25, 0.25, 0.15, 0.25], abs=1e-12)
    assert got[4] == utility(ann, belief, syc)
    # two annotators: the mean of their blind utilities
    ann2 = Annotator("u", verbosity_bias=0.0)
    two = correctness_blind_utilities(prompts, responses, [ann, ann2])
    one2 = correctness_blind_utilities(prompts, responses, [ann2])
    assert two == pytest.approx([(a + b) / 2 for a, b in zip(got, one2)], abs=1e-12)


def test_prob_prefers_formula():
    """d = u(a) - u(b) = 1.5 (same length, no bias applies: wrong has honest -0.5), T = 0.5, noise 0.1:
    P(a) = 0.9 * sigmoid(3) + 0.1 * sigmoid(-3)."""
    ann = Annotator("t", temperature=0.5, noise=0.1)
    assert prob_prefers(ann, ARITH, IDEAL, WRONG) == pytest.approx(0.9 * sig(3) + 0.1 * sig(-3), rel=1e-12)
    assert prob_prefers(ann, ARITH, WRONG, IDEAL) == pytest.approx(1 - (0.9 * sig(3) + 0.1 * sig(-3)))
    p = outcome_probs(ann, ARITH, IDEAL, IDEAL)
    assert p == {"a": 0.0, "b": 0.0, "tie": 1.0}
    assert prob_prefers(ann, ARITH, IDEAL, IDEAL) == 0.5


@pytest.mark.parametrize("ann", default_annotators(), ids=lambda a: a.name)
def test_empirical_choice_rates_match(ann):
    """Over n draws the count of "a" is Binomial(n, P(a)): within 4 sigma."""
    rng = random.Random(0)
    n = 4000
    for a, b in [(IDEAL, WRONG), (PADDED, IDEAL), ("Sorry, I can't help with that.", IDEAL)]:
        p = outcome_probs(ann, ARITH, a, b)
        labels = [label_pair(ann, ARITH, a, b, rng) for _ in range(n)]
        assert labels.count("tie") == 0
        k = labels.count("a")
        assert abs(k - n * p["a"]) <= 4 * math.sqrt(n * p["a"] * (1 - p["a"])) + 1, (a, b, k / n, p)


def test_ties_below_margin():
    ann = Annotator("t", tie_margin=0.2, verbosity_bias=0.0)
    rng = random.Random(0)
    # one extra word: gold difference 1 - exp(-1/15) = 0.0645 < 0.2 -> always a tie
    assert {label_pair(ann, ARITH, IDEAL, "3 plus 4 is 7 ok.", rng) for _ in range(50)} == {"tie"}
    assert "tie" not in {label_pair(ann, ARITH, IDEAL, WRONG, rng) for _ in range(50)}


def test_verbosity_bias_prefers_padding_but_not_wrong_answers():
    rng = random.Random(2)
    prompts = [d["prompt"] for d in make_prompts(200, 9)]
    for ann in default_annotators():
        pad = [prob_prefers(ann, p, respond(p, "padded", rng), respond(p, "good", rng)) for p in prompts]
        assert sum(pad) / len(pad) > 0.6, ann.name
        one = [prob_prefers(ann, p, respond(p, "padded", rng, n_fillers=1), respond(p, "good", rng))
               for p in prompts]
        assert sum(one) / len(one) > 0.5, ann.name
        wrong = [prob_prefers(ann, p, respond(p, "good", rng), respond(p, "wrong", rng))
                 for p in prompts if "wrong" in _styles(p)]
        assert sum(wrong) / len(wrong) > 0.75, ann.name
    flat = default_annotators(verbosity_scale=0.0)[0]
    assert prob_prefers(flat, ARITH, PADDED, IDEAL) < 0.5  # without the bias, gold's concise wins


def _styles(p):
    from rlhfkit.world import APPLICABLE_STYLES, parse_prompt
    return APPLICABLE_STYLES[parse_prompt(p).kind]


def test_ceiling_hand_computed():
    """Two annotators, three items; annotator choice uniform, predictor doesn't know which.

    A: T=1, noise 0, no biases. B: T=1, noise 0.2, no biases, tie_margin 0.
    item 1 (IDEAL, WRONG): d = 1.5 for both. P_A(a) = s = sigmoid(1.5); P_B(a) = 0.8 s + 0.2 (1 - s).
        mixture pa = (s + 0.8 s + 0.2 - 0.2 s) / 2 = 0.8 s + 0.1, pb = 1 - pa; contributes max(pa, pb) / 1.
    item 2 (IDEAL, IDEAL): d = 0: tie for A (margin 0.05); for B |0| < 0 is false, so B labels it with
        P(a) = 0.5: pa = pb = 0.25, contributes 0.25 to the numerator and 0.5 to the denominator.
    item 3 (WRONG, IDEAL): mirror of item 1: max is again 0.8 s + 0.1.
    ceiling = (2 (0.8 s + 0.1) + 0.25) / 2.5.
    """
    a = Annotator("A", temperature=1.0, verbosity_bias=0, confidence_bias=0, agreement_bias=0, noise=0.0)
    b = Annotator("B", temperature=1.0, verbosity_bias=0, confidence_bias=0, agreement_bias=0, noise=0.2,
                  tie_margin=0.0)
    s = sig(1.5)
    items = [(ARITH, IDEAL, WRONG), (ARITH, IDEAL, IDEAL), (ARITH, WRONG, IDEAL)]
    assert ceiling(items, [a, b]) == pytest.approx((2 * (0.8 * s + 0.1) + 0.25) / 2.5, rel=1e-12)
    # known annotator: A contributes s, s (item 2 is a tie for A); B: 0.8 s + 0.2 (1 - s) twice, 0.5 once
    pb = 0.8 * s + 0.2 * (1 - s)
    assert ceiling(items, [a, b], known_annotator=True) == pytest.approx((2 * s + 2 * pb + 0.5) / 5, rel=1e-12)
    assert math.isnan(ceiling([(ARITH, IDEAL, IDEAL)], [a]))


def test_ceiling_matches_bayes_predictor_simulation():
    """Label sampled pairs with a uniformly drawn annotator; the predictor that knows the mixture
    probabilities reaches the ceiling (within 4 binomial sigma); a length-only predictor does not beat it."""
    rng = random.Random(5)
    anns = default_annotators()
    prompts = [d["prompt"] for d in make_prompts(150, 21)]
    styles = ["good", "padded", "wrong", "over_refusal", "repetitive"]
    items = []
    for p in prompts:
        ok = [s for s in styles if s in _styles(p)]
        items.append((p, respond(p, rng.choice(ok), rng), respond(p, rng.choice(ok), rng)))
    c = ceiling(items, anns)
    probs = [[outcome_probs(an, p, a, b) for an in anns] for p, a, b in items]
    predict_a = [sum(x["a"] for x in pr) >= sum(x["b"] for x in pr) for pr in probs]
    correct = total = longer_correct = 0
    for _ in range(20):
        for (p, a, b), pa in zip(items, predict_a):
            lab = label_pair(rng.choice(anns), p, a, b, rng)
            if lab == "tie":
                continue
            total += 1
            correct += (lab == "a") == pa
            longer_correct += (lab == "a") == (len(a.split()) >= len(b.split()))
    acc = correct / total
    assert abs(acc - c) < 4 * math.sqrt(c * (1 - c) / total)
    assert longer_correct / total < c + 4 * math.sqrt(c * (1 - c) / total)
    assert 0.6 < c < 1.0
