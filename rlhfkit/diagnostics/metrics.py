"""Evaluation statistics: pure, small functions over lists and tensors (no models, no files).

Used by `rlhfkit eval`, the over-optimisation monitor and the report. Every function is deterministic.

- `win_rate`         tie-adjusted win rate with a 95% **Wilson score interval** (Wilson 1927) on the rate
                     (wins + ties/2) / n. We chose Wilson over a bootstrap: closed form, deterministic, and well
                     behaved near 0 and 1 where a normal (Wald) interval is not.
- `distinct_n`       unique n-grams / all n-grams over a set of texts (Li et al. 2016): diversity, mode collapse.
- `self_bleu`        mean BLEU of each text against all the others (Zhu et al. 2018, Texygen): high = samples
                     look alike. A small BLEU (Papineni et al. 2002) is written out here; no nltk.
- `refusal_rate`     fraction of texts containing a refusal phrase (keyword list below, case-insensitive).
- `mc_sequence_kl`   Monte-Carlo KL(pi || ref) from samples of pi: k1 = log pi(y) - log ref(y) summed over tokens,
                     and the non-negative k3 = (r - 1) - log r with r = ref(y)/pi(y) (Schulman 2020), each with a
                     standard error.
- `paired_bootstrap` mean of paired differences with a 95% percentile bootstrap interval (Efron & Tibshirani 1993),
                     resampling the pairs: is best-of-16's change from best-of-8 larger than the noise?
- `pearson`, `spearman`
- alarms over a logged series (`proxy_up_gold_down`, `length_drift`, `disagreement_rising`,
  `diversity_collapse`): each returns the first step where it fires as {"kind", "step", "message"}, or None.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Callable, Sequence

# ----------------------------------------------------------------------------------------------- win rate
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; `successes` may be fractional (ties counted half).

    centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], tie_eps: float = 0.0) -> dict[str, float]:
    """How often A beats B on paired scores: {"mean", "low", "high", "wins", "ties", "losses", "n"}.

    A pair is a tie when |a - b| <= tie_eps and counts half a win. The interval is the Wilson 95% interval
    on the tie-adjusted rate (see module docstring).
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"win_rate: {len(scores_a)} scores for A but {len(scores_b)} for B")
    wins = ties = 0
    for a, b in zip(scores_a, scores_b):
        a, b = float(a), float(b)
        if abs(a - b) <= tie_eps:
            ties += 1
        elif a > b:
            wins += 1
    n = len(scores_a)
    rate = (wins + 0.5 * ties) / n if n else 0.5
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return {"mean": rate, "low": low, "high": high, "wins": wins, "ties": ties, "losses": n - wins - ties, "n": n}


# ----------------------------------------------------------------------------------------------- diversity
def words(text: str) -> list[str]:
    """Whitespace tokens, lower-cased: the unit of distinct-n and self-BLEU (model-independent)."""
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams over all texts; 0.0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], n_max: int = 4) -> float:
    """Sentence BLEU of a token list against reference token lists (Papineni et al. 2002).

    p_n = clipped n-gram matches / hypothesis n-grams (clip = max count in any one reference); for n >= 2 the
    add-one smoothing of Lin & Och (2004): p_n = (m_n + 1) / (l_n + 1), so short texts do not score 0.
    BLEU = BP * exp(mean_n log p_n), BP = exp(1 - r / c) when c < r, with r the reference length closest to c.
    """
    if not hypothesis or not references:
        return 0.0
    max_ref: list[Counter] = []
    for n in range(1, n_max + 1):
        clip: Counter = Counter()
        for ref in references:
            for g, k in Counter(ngrams(ref, n)).items():
                clip[g] = max(clip[g], k)
        max_ref.append(clip)
    hyp = [Counter(ngrams(hypothesis, n)) for n in range(1, n_max + 1)]
    return _bleu(hyp, lambda n, g: max_ref[n][g], len(hypothesis), Counter(len(ref) for ref in references))


def _bleu(hyp: list[Counter], clip: Callable[[int, tuple], int], c: int, ref_lengths: Counter) -> float:
    """`bleu` from the hypothesis' n-gram counts (hyp[n - 1]), the clip count of n-gram g at order n - 1
    (clip(n - 1, g)), its length c > 0 and the multiset of reference lengths."""
    n_max = len(hyp)
    log_p = 0.0
    for n, counts in enumerate(hyp):
        matches = sum(min(k, clip(n, g)) for g, k in counts.items())
        total = sum(counts.values())
        if n == 0:
            if matches == 0:
                return 0.0
            p = matches / total
        else:
            p = (matches + 1) / (total + 1)
        log_p += math.log(p) / n_max
    r = min(ref_lengths, key=lambda L: (abs(L - c), L))  # a Counter holds only lengths that occur
    bp = 1.0 if c >= r else math.exp(1.0 - r / c)
    return bp * math.exp(log_p)


def self_bleu(texts: Sequence[str], n_max: int = 4, sample: int = 0, seed: int = 0) -> float:
    """Mean BLEU of each text against all the other texts (Zhu et al. 2018). 1.0 = all identical.

    `sample` > 0 scores only that many hypotheses, drawn with `random.Random(seed)` (still against all other
    texts). Fewer than two texts give 0.0. Equal to `bleu(texts[i], the others)` for each scored i, but in time
    linear in the total text length: the clip count of an n-gram is its largest count in any one reference, and the
    largest among "all texts but i" is the overall largest unless text i holds it, in which case it is the second
    largest. (The direct computation took 1.8 s for 64 of 1,024 texts; the demo does it 12 times.)
    """
    toks = [words(t) for t in texts]
    if len(toks) < 2:
        return 0.0
    idx = list(range(len(toks)))
    if 0 < sample < len(idx):
        idx = sorted(random.Random(seed).sample(idx, sample))
    counts = [[Counter(ngrams(t, n)) for n in range(1, n_max + 1)] for t in toks]
    # per order and n-gram: (largest count, a text holding it, second largest count over the other texts)
    top: list[dict[tuple, tuple[int, int, int]]] = [{} for _ in range(n_max)]
    for j, per_order in enumerate(counts):
        for n, cnt in enumerate(per_order):
            for g, k in cnt.items():
                k1, j1, k2 = top[n].get(g, (0, -1, 0))
                top[n][g] = (k, j, k1) if k > k1 else (k1, j1, max(k2, k))
    lengths = Counter(len(t) for t in toks)
    scores = []
    for i in idx:
        if not toks[i]:
            scores.append(0.0)
            continue
        clip = lambda n, g: top[n][g][2] if top[n][g][1] == i else top[n][g][0]  # noqa: E731
        others = lengths - Counter({len(toks[i]): 1})
        scores.append(_bleu(counts[i], clip, len(toks[i]), others))
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------------------------- refusals
REFUSAL_PHRASES: tuple[str, ...] = (
    "i can't help", "i cannot help", "i won't help", "i will not help", "i can't assist", "i cannot assist",
    "i'm sorry, but", "i am sorry, but", "sorry, i can't", "sorry, i cannot", "sorry, i won't",
    "i can't do that", "i cannot do that", "i'm not able to help", "i am not able to help", "as an ai",
    "i must decline", "i can't provide", "i cannot provide",
)
"""Lower-cased substrings that mark a refusal (they cover the built-in world's refusals); apostrophes are
normalised (’ -> ') before matching."""


def is_refusal(text: str) -> bool:
    t = text.lower().replace("\u2019", "'")
    return any(p in t for p in REFUSAL_PHRASES)


def refusal_rate(texts: Sequence[str]) -> float:
    """Fraction of texts that contain any of REFUSAL_PHRASES (0.0 for no texts)."""
    return sum(is_refusal(t) for t in texts) / len(texts) if texts else 0.0


# ----------------------------------------------------------------------------------------------- KL
def mc_sequence_kl(policy_logps_sum, ref_logps_sum) -> dict[str, float]:
    """Monte-Carlo KL(pi || ref) in nats per sequence, from B responses sampled from pi.

    policy_logps_sum, ref_logps_sum: (B,) sum over response tokens of log pi(y_t | .) and log ref(y_t | .),
    computed at the sampling temperature. With d = log pi(y) - log ref(y):
      kl  = mean(d)                      k1: unbiased, can be negative on a finite sample;
      k3  = mean(exp(-d) - 1 + d)        non-negative per sample, unbiased (E_pi[ref/pi] = 1);
    each with its standard error std / sqrt(B) ("se", "k3_se"). Identical inputs give exactly 0.
    """
    import torch

    lp = torch.as_tensor(policy_logps_sum, dtype=torch.float64).flatten()
    lr = torch.as_tensor(ref_logps_sum, dtype=torch.float64).flatten()
    if lp.shape != lr.shape:
        raise ValueError(f"mc_sequence_kl: shapes {tuple(lp.shape)} and {tuple(lr.shape)} differ")
    B = lp.numel()
    if B == 0:
        return {"kl": 0.0, "se": 0.0, "k3": 0.0, "k3_se": 0.0, "n": 0}
    d = lp - lr  # (B,)
    k3 = torch.expm1(-d) + d  # (B,) exp(-d) - 1 + d >= 0

    def se(x):
        return float(x.std(unbiased=True) / math.sqrt(B)) if B > 1 else 0.0

    return {"kl": float(d.mean()), "se": se(d), "k3": float(k3.mean()), "k3_se": se(k3), "n": B}


# ----------------------------------------------------------------------------------------------- bootstrap
def paired_bootstrap(a, b, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of b - a over paired items (e.g. per-prompt gold under two policies), with a percentile bootstrap
    interval: resample the items with replacement `resamples` times, take the (1 - level)/2 and (1 + level)/2
    quantiles of the resampled means. Deterministic in `seed`."""
    import torch

    d = torch.as_tensor(b, dtype=torch.float64) - torch.as_tensor(a, dtype=torch.float64)
    if d.numel() == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    gen = torch.Generator().manual_seed(seed)
    # one resample at a time: all (resamples, n) indices at once would take 80 MB for 1,024 prompts
    means = torch.stack([d[torch.randint(len(d), (len(d),), generator=gen)].mean() for _ in range(resamples)])
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(means, q).tolist()
    return {"mean": d.mean().item(), "low": low, "high": high}


def clustered_paired_bootstrap(a, b, clusters, resamples: int = 2_000, seed: int = 0,
                               level: float = 0.95) -> dict[str, float]:
    """Pooled mean of b - a over paired items that come in clusters (e.g. the pairs of one prompt, judged right (1)
    or wrong (0) by two reward models), with a percentile bootstrap interval that resamples whole clusters: items
    of one cluster are correlated, so resampling items alone would make the interval too narrow. Each resample's
    value is sum(b - a) / count over the drawn clusters.

    a (Ra, n) and b (Rb, n) may also hold each item's value under Ra and Rb replicas (e.g. reward models trained on
    the same data with other seeds); the mean is then b's replica mean minus a's, and each resample also draws, for
    a and b separately, as many replicas with replacement (a two-level bootstrap), so the interval covers the
    replicas' training noise, which one model a side leaves out of it. One-dimensional a and b are one replica
    each; identical replicas give the same interval as one. Deterministic in `seed`."""
    import torch

    A, B = (torch.atleast_2d(torch.as_tensor(x, dtype=torch.float64)) for x in (a, b))
    n = A.shape[1]
    if n == 0 or B.shape[1] != n or n != len(clusters):
        raise ValueError(f"clustered_paired_bootstrap: {n} and {B.shape[1]} items for {len(clusters)} cluster ids")
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = torch.tensor([ids[c] for c in clusters])
    G = len(ids)
    sa = torch.zeros(A.shape[0], G, dtype=torch.float64).index_add_(1, index, A)  # (Ra, G) per-cluster sums
    sb = torch.zeros(B.shape[0], G, dtype=torch.float64).index_add_(1, index, B)
    counts = torch.zeros(G, dtype=torch.float64).index_add_(0, index, torch.ones(n, dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    draw = torch.randint(G, (resamples, G), generator=gen)  # (R, G) clusters
    ra = torch.randint(A.shape[0], (resamples, A.shape[0]), generator=gen)  # (R, Ra) replicas
    rb = torch.randint(B.shape[0], (resamples, B.shape[0]), generator=gen)
    diff = sb[rb].mean(1) - sa[ra].mean(1)  # (R, G): per-cluster sums of b - a under the drawn replicas
    means = diff.gather(1, draw).sum(1) / counts[draw].sum(1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(means, q).tolist()
    return {"mean": (B.mean(0) - A.mean(0)).mean().item(), "low": low, "high": high, "n": n, "clusters": G,
            "replicas": [A.shape[0], B.shape[0]]}


# ----------------------------------------------------------------------------------------------- correlation
def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either series is constant or shorter than 2."""
    n = len(x)
    if n != len(y):
        raise ValueError("pearson: series differ in length")
    if n < 2:
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks, ties get the average of their ranks."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks)."""
    return pearson(ranks(x), ranks(y))


def mean(x: Sequence[float]) -> float:
    return sum(x) / len(x) if len(x) else 0.0


# ----------------------------------------------------------------------------------------------- alarms
def _trailing_means(values: Sequence[float], window: int) -> list[float | None]:
    """m[i] = mean(values[i-window+1 .. i]) once `window` points exist, else None."""
    out: list[float | None] = []
    for i in range(len(values)):
        out.append(mean(values[i - window + 1 : i + 1]) if i + 1 >= window else None)
    return out


def _alarm(kind: str, step: int, message: str) -> dict:
    return {"kind": kind, "step": int(step), "message": message}


def proxy_up_gold_down(steps: Sequence[int], proxy: Sequence[float], gold: Sequence[float], window: int = 3,
                       min_drop: float = 0.02) -> dict | None:
    """Over-optimisation (Gao, Schulman & Hilton 2022): the proxy reward keeps rising while the gold / held-out
    reward has fallen from its peak.

    On trailing means over `window` points (to smooth sampling noise): let j be the point where the gold
    mean peaked so far. Fires at the first i with gold_mean[i] < gold_mean[j] - min_drop and
    proxy_mean[i] > proxy_mean[j]. Silent while gold keeps improving, and when both fall together.
    """
    g = _trailing_means(gold, window)
    p = _trailing_means(proxy, window)
    best = None
    for i in range(len(steps)):
        if g[i] is None:
            continue
        if best is None or g[i] > g[best]:
            best = i
            continue
        if g[i] < g[best] - min_drop and p[i] > p[best]:
            return _alarm("proxy_up_gold_down", steps[i],
                          f"proxy reward rose {p[best]:.3f} -> {p[i]:.3f} while gold fell {g[best]:.3f} -> "
                          f"{g[i]:.3f} since step {steps[best]} (window {window}): over-optimisation")
    return None


def _ratio_alarm(kind: str, steps, values, window: int, ratio: float, up: bool, what: str,
                 floor: float = 0.0) -> dict | None:
    m = _trailing_means(values, window)
    base = mean(values[:window]) if len(values) >= window else None
    if base is None:
        return None
    for i in range(window, len(values)):
        v = m[i]
        if up and v > max(ratio * base, base + floor):
            return _alarm(kind, steps[i], f"{what} rose {base:.3g} -> {v:.3g} (> {ratio:g}x the start)")
        if not up and v < ratio * base:
            return _alarm(kind, steps[i], f"{what} fell {base:.3g} -> {v:.3g} (< {ratio:g}x the start)")
    return None


def length_drift(steps: Sequence[int], lengths: Sequence[float], window: int = 3, ratio: float = 1.5) -> dict | None:
    """Fires when the trailing mean response length leaves [start / ratio, start * ratio], where start is the
    mean of the first `window` points (length growth is the classic reward hack: verbose answers)."""
    up = _ratio_alarm("length_drift", steps, lengths, window, ratio, True, "mean response length")
    down = _ratio_alarm("length_drift", steps, lengths, window, 1.0 / ratio, False, "mean response length")
    fired = [a for a in (up, down) if a is not None]
    return min(fired, key=lambda a: a["step"]) if fired else None


def disagreement_rising(steps: Sequence[int], disagreement: Sequence[float], window: int = 3,
                        ratio: float = 1.5, floor: float = 0.0) -> dict | None:
    """Fires when the reward-model ensemble's disagreement (std across members) grows beyond `ratio` x its
    starting level (and by more than `floor`): the policy is moving where the reward models were not trained
    (Coste et al. 2023, Eisenstein et al. 2023)."""
    return _ratio_alarm("disagreement_rising", steps, disagreement, window, ratio, True, "ensemble disagreement",
                        floor)


def diversity_collapse(steps: Sequence[int], distinct: Sequence[float], window: int = 3,
                       ratio: float = 0.5) -> dict | None:
    """Fires when the trailing mean distinct-n falls below `ratio` x its starting level (mode collapse)."""
    return _ratio_alarm("diversity_collapse", steps, distinct, window, ratio, False, "distinct-2")


def entropy_collapse(steps: Sequence[int], entropy: Sequence[float], window: int = 3,
                     ratio: float = 0.3) -> dict | None:
    """Fires when the trailing mean policy entropy (nats per token) falls below `ratio` x its starting level: the
    policy has become near-deterministic on its own samples and stops exploring, the failure DAPO's clip-higher
    targets (Yu et al. 2025, sec. 3.1 and fig. 2b)."""
    return _ratio_alarm("entropy_collapse", steps, entropy, window, ratio, False, "policy entropy")
