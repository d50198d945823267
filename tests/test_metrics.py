"""Evaluation statistics, worked by hand (rlhfkit.diagnostics.metrics)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlhfkit.diagnostics import metrics as M


def test_wilson_interval_known_values():
    """Wilson 95% intervals from the literature (Newcombe 1998, table I): 0/10 -> (0, 0.2775),
    5/10 -> (0.2366, 0.7634); 10/10 -> (0.7225, 1)."""
    assert M.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert M.wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert M.wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)


def test_win_rate_ties_count_half():
    """4 wins, 2 ties, 4 losses of 10: rate (4 + 2/2) / 10 = 0.5, interval that of 5/10."""
    a = [2, 2, 2, 2, 1, 1, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    wr = M.win_rate(a, b)
    assert (wr["wins"], wr["ties"], wr["losses"], wr["n"]) == (4, 2, 4, 10)
    assert wr["mean"] == 0.5
    assert (wr["low"], wr["high"]) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert M.win_rate([1.0, 2.0], [1.05, 1.0], tie_eps=0.1)["mean"] == 0.75  # |1 - 1.05| <= eps: a tie
    with pytest.raises(ValueError):
        M.win_rate([1], [1, 2])


def test_distinct_n():
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert M.distinct_n(["a b", "A B"], 1) == 0.5  # lower-cased: {a, b} of 4
    assert M.distinct_n(["a b c", "d e f"], 2) == 1.0
    assert M.distinct_n(["a", ""], 2) == 0.0  # no bigrams at all


def test_bleu_hand_worked():
    """hyp "a b c d", ref "a b c e": p1 = 3/4; smoothed p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1);
    BLEU = (3/4 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.1875 ** 0.25; equal lengths, no brevity penalty."""
    assert M.bleu("a b c d".split(), ["a b c e".split()]) == pytest.approx(0.1875 ** 0.25, rel=1e-12)
    assert M.bleu("a b c d".split(), ["a b c d".split()]) == 1.0
    # brevity: hyp "a b" vs ref of 4 words: every (smoothed) precision is 1, BP = exp(1 - 4/2)
    assert M.bleu("a b".split(), ["a b c d".split()]) == pytest.approx(math.exp(-1), rel=1e-12)
    # clipping: "the the the" against "the cat": p1 = 1/3
    assert M.bleu("the the the".split(), ["the cat".split()], n_max=1) == pytest.approx(1 / 3)
    assert M.bleu("x y".split(), ["a b".split()]) == 0.0


def test_self_bleu():
    assert M.self_bleu(["a b c d"] * 3) == 1.0
    assert M.self_bleu(["a b c d", "a b c e"]) == pytest.approx(0.1875 ** 0.25)
    assert M.self_bleu(["only one"]) == 0.0
    texts = [f"w{i} w{i + 1} w{i + 2}" for i in range(20)]
    s1 = M.self_bleu(texts, sample=5, seed=3)
    assert s1 == M.self_bleu(texts, sample=5, seed=3)  # deterministic
    assert 0 < s1 < 1


def test_self_bleu_equals_bleu_against_all_other_texts():
    """self_bleu's linear-time clip counts (largest count, or the second largest when the hypothesis holds the
    largest) give exactly the direct definition: mean over hypotheses i of bleu(text i, every other text). Texts
    from a 5-word vocabulary so n-grams repeat across and within texts, with duplicates, an empty text, and
    hypotheses whose every unigram is unmatched."""
    rng = random.Random(0)
    for trial in range(30):
        texts = [" ".join(rng.choice("a b c d e".split()) for _ in range(rng.randint(0, 9))) for _ in range(12)]
        texts += [texts[0], texts[1], "", "zz yy"]
        toks = [M.words(t) for t in texts]
        direct = [M.bleu(toks[i], toks[:i] + toks[i + 1:]) for i in range(len(toks))]
        assert M.self_bleu(texts) == sum(direct) / len(direct)
        idx = sorted(random.Random(trial).sample(range(len(texts)), 5))
        assert M.self_bleu(texts, sample=5, seed=trial) == sum(direct[i] for i in idx) / 5


def test_refusal_rate():
    from rlhfkit.world import REFUSALS

    assert M.refusal_rate(list(REFUSALS)) == 1.0
    texts = ["Sorry, I can't help with that.", "The answer is 4.", "I\u2019m sorry, but no."]
    assert M.refusal_rate(texts) == pytest.approx(2 / 3)
    assert M.refusal_rate([]) == 0.0


def test_mc_sequence_kl_hand_worked():
    """d = logpi - logref = [1, 0]: k1 = 0.5, se = std([1, 0]) / sqrt(2) = 0.5;
    k3 = mean(exp(-d) - 1 + d) = (e^-1 + 0) / 2."""
    out = M.mc_sequence_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]))
    assert out["kl"] == 0.5 and out["se"] == pytest.approx(0.5)
    assert out["k3"] == pytest.approx(math.exp(-1) / 2, rel=1e-12)
    same = M.mc_sequence_kl(torch.tensor([-3.5, -1.25, -7.0]), torch.tensor([-3.5, -1.25, -7.0]))
    assert same["kl"] == 0.0 and same["k3"] == 0.0 and same["se"] == 0.0  # exactly, policy == ref


def test_mc_sequence_kl_matches_analytic():
    """Two-token sequences from p = [0.7, 0.2, 0.1] per token vs uniform q: KL = 2 * sum p log(p / q)."""
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.full((3,), 1 / 3, dtype=torch.float64)
    exact = 2 * float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 2 * 20000, replacement=True, generator=g).view(20000, 2)
    out = M.mc_sequence_kl(p.log()[x].sum(-1), q.log()[x].sum(-1))
    assert abs(out["kl"] - exact) < 4 * out["se"]
    assert abs(out["k3"] - exact) < 4 * out["k3_se"]


def test_correlations():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert M.ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    # hand-worked: ranks x = [1,2,3], y = [1,3,2]: pearson of ranks = 0.5
    assert M.spearman([10, 20, 30], [5, 9, 7]) == pytest.approx(0.5)


STEPS = list(range(10))


def test_proxy_up_gold_down_fires_on_rise_then_fall():
    proxy = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    gold = [0, 1, 2, 3, 4, 3, 2, 1, 0, -1]
    a = M.proxy_up_gold_down(STEPS, proxy, gold, window=3, min_drop=0.02)
    # trailing gold means: ... step 4 -> 3.0 (peak), step 5 -> 3.33 (new peak), step 6 -> 3.0 (drop 0.33)
    assert a is not None and a["kind"] == "proxy_up_gold_down" and a["step"] == 6


def test_proxy_up_gold_down_silent_on_improvement_and_joint_fall():
    assert M.proxy_up_gold_down(STEPS, STEPS, [0.1 * s for s in STEPS]) is None  # both improve
    noisy = [0, 0.5, 0.4, 0.9, 0.8, 1.3, 1.2, 1.7, 1.6, 2.1]  # zig-zag but rising: trailing means rise
    assert M.proxy_up_gold_down(STEPS, STEPS, noisy) is None
    fall = [9 - s for s in STEPS]
    assert M.proxy_up_gold_down(STEPS, fall, fall) is None  # proxy falls too: not over-optimisation
    assert M.proxy_up_gold_down([0, 1], [0, 1], [1, 0]) is None  # fewer points than the window


def test_length_drift_diversity_disagreement():
    assert M.length_drift(STEPS, [10] * 10) is None
    a = M.length_drift(STEPS, [10, 10, 10, 12, 14, 16, 18, 20, 22, 24], window=3, ratio=1.5)
    # trailing means: step 5 -> 14, step 6 -> 16 > 15
    assert a["kind"] == "length_drift" and a["step"] == 6
    b = M.length_drift(STEPS, [12, 12, 12, 9, 6, 3, 3, 3, 3, 3], window=3, ratio=1.5)
    assert b["step"] == 5 and "fell" in b["message"]  # step 5 -> mean 6 < 12 / 1.5
    c = M.diversity_collapse(STEPS, [0.8, 0.8, 0.8, 0.7, 0.5, 0.3, 0.2, 0.2, 0.2, 0.2], ratio=0.5)
    assert c["kind"] == "diversity_collapse" and c["step"] == 6  # mean(0.5, 0.3, 0.2) = 0.333 < 0.4
    assert M.diversity_collapse(STEPS, [0.8 + 0.01 * s for s in STEPS]) is None
    d = M.disagreement_rising(STEPS, [0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], ratio=1.5)
    assert d["kind"] == "disagreement_rising" and d["step"] == 5  # mean(0.1, 0.2, 0.3) = 0.2 > 0.15
    assert M.disagreement_rising(STEPS, [0.1] * 10) is None


# ----------------------------------------------------------------------------------------------- paired bootstrap
def test_paired_bootstrap_by_hand():
    """Differences b - a of 0 and 1: every resample of two pairs has mean 0 (both draws the first pair, prob. 1/4),
    0.5 (prob. 1/2) or 1 (prob. 1/4), so the 2.5% and 97.5% quantiles of the resampled means are 0 and 1, and the
    mean is 0.5. A constant difference c gives the point interval [c, c]."""
    r = M.paired_bootstrap([0.0, 0.0], [0.0, 1.0])
    assert r == {"mean": 0.5, "low": 0.0, "high": 1.0}
    r = M.paired_bootstrap([1.0, 2.0, 3.0], [1.25, 2.25, 3.25])
    assert r["mean"] == pytest.approx(0.25, abs=1e-12)
    assert r["low"] == pytest.approx(0.25, abs=1e-12) and r["high"] == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(ValueError, match="at least one pair"):
        M.paired_bootstrap([], [])


def test_paired_bootstrap_matches_the_normal_interval_for_many_pairs():
    """For 2,000 pairs the percentile interval is close to mean +- 1.96 sd / sqrt(n) (within 5% of its width), it
    pairs (a shift shared by a and b cancels), and a seed gives the same interval twice."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2000, generator=gen, dtype=torch.float64) * 5  # large per-item spread that pairing removes
    d = 0.1 + torch.randn(2000, generator=gen, dtype=torch.float64)
    r = M.paired_bootstrap(a, a + d, seed=3)
    half = 1.959964 * d.std().item() / 2000 ** 0.5
    assert r["mean"] == pytest.approx(d.mean().item(), abs=1e-12)
    assert r["high"] - r["low"] == pytest.approx(2 * half, rel=0.05)
    assert (r["low"] + r["high"]) / 2 == pytest.approx(r["mean"], abs=0.05 * half)
    assert M.paired_bootstrap(a, a + d, seed=3) == r


def test_clustered_paired_bootstrap_by_hand():
    """Two clusters: A with 3 items, each changed by +1 (sum 3), B with 1 item changed by 0. The pooled mean is
    3/4. A resample draws (A, A), (A, B), (B, A) or (B, B): pooled means 6/6 = 1, 3/4, 3/4 and 0/2 = 0, with
    probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 1. A constant change c in every item
    gives [c, c]; clusters larger than one make the interval wider than the item-level bootstrap's."""
    r = M.clustered_paired_bootstrap([0, 0, 0, 1], [1, 1, 1, 1], ["A", "A", "A", "B"])
    assert r == {"mean": 0.75, "low": 0.0, "high": 1.0, "n": 4, "clusters": 2, "replicas": [1, 1]}
    r = M.clustered_paired_bootstrap([0.0, 1.0, 0.5], [0.25, 1.25, 0.75], [1, 2, 2])
    assert r["low"] == pytest.approx(0.25, abs=1e-12) and r["high"] == pytest.approx(0.25, abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    d = (torch.rand(50, generator=gen) < 0.5).double().repeat_interleave(8)  # 50 clusters of 8 identical items
    wide = M.clustered_paired_bootstrap(torch.zeros(400), d, [i // 8 for i in range(400)])
    narrow = M.paired_bootstrap(torch.zeros(400), d)
    assert wide["high"] - wide["low"] > 2 * (narrow["high"] - narrow["low"])  # sqrt(8) ~ 2.8 in theory
    with pytest.raises(ValueError, match="2 and 2 items for 1 cluster ids"):
        M.clustered_paired_bootstrap([0, 1], [1, 1], ["A"])
    with pytest.raises(ValueError, match="2 and 3 items for 2 cluster ids"):
        M.clustered_paired_bootstrap([0, 1], [1, 1, 1], ["A", "B"])


def test_clustered_paired_bootstrap_over_replicas_by_hand():
    """a has two replicas on two items in two clusters: one wrong on both (0, 0), one right on both (1, 1); b one
    replica right on both. Mean change: 1 - (0 + 1) / 2 = 0.5. The clusters are alike, so only a's replica draw
    moves a resample: (0, 0) -> 1, a mixed draw -> 0.5, (1, 1) -> 0, with probabilities 1/4, 1/2, 1/4, so the
    2.5% and 97.5% quantiles are 0 and 1, where an interval over items alone on the replicas' mean would be [0.5,
    0.5]. Identity: identical replicas give one replica's interval, draw for draw."""
    r = M.clustered_paired_bootstrap([[0, 0], [1, 1]], [[1, 1]], [0, 1])
    assert r == {"mean": 0.5, "low": 0.0, "high": 1.0, "n": 2, "clusters": 2, "replicas": [2, 1]}
    gen = torch.Generator().manual_seed(1)
    a, b = ((torch.rand(60, generator=gen) < p).double() for p in (0.5, 0.7))
    groups = [i // 3 for i in range(60)]
    one = M.clustered_paired_bootstrap(a, b, groups)
    many = M.clustered_paired_bootstrap(torch.stack([a, a, a]), torch.stack([b, b]), groups)
    assert many["replicas"] == [3, 2] and one["low"] < one["mean"] < one["high"]
    for k in ("mean", "low", "high"):
        assert many[k] == pytest.approx(one[k], abs=1e-12)


def test_entropy_collapse_by_hand():
    """Start = mean of the first 3 points = 2.0; ratio 0.3 -> fires when the trailing mean of 3 drops below 0.6:
    entropies (2, 2, 2, 1.5, 1, 0.5, 0.3, 0.2, ...): trailing means 1.5 (step 4: 2, 1.5, 1), 1.0, 0.6 (step 6:
    1, 0.5, 0.3 -> 0.6, not below), 0.333 (step 7) -> fires at step 7."""
    e = [2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.3, 0.2, 0.2, 0.2]
    a = M.entropy_collapse(STEPS, e, window=3, ratio=0.3)
    assert a["kind"] == "entropy_collapse" and a["step"] == STEPS[7] and "fell" in a["message"]
    assert M.entropy_collapse(STEPS, [2.0] * 3 + [0.7] * 7, ratio=0.3) is None  # 0.7 > 0.6: a drop, no collapse
    assert M.entropy_collapse(STEPS[:2], [2.0, 0.0]) is None  # fewer points than the window
