"""Simulated annotators: Bradley-Terry choices on gold utility plus the biases real annotators show.

The labelling process, for annotator `A`, prompt `x` and responses `a`, `b`:

1. utilities ``u(r) = gold_total(x, r; A.weights) + A.verbosity_bias * words(r) / 10
   + A.confidence_bias * [r has a confident marker] + A.agreement_bias * [r agrees with the user's belief]``;
2. ``d = u(a) - u(b)``; if ``|d| < A.tie_margin`` the label is ``"tie"`` (always: the annotator cannot tell
   them apart -- identical responses, say);
3. otherwise the annotator picks ``a`` with probability ``s = sigmoid(d / A.temperature)``;
4. then, with probability ``A.noise``, the choice is flipped (a lapse: misclick, inattention).

So ``P(a) = (1 - noise) * s + noise * (1 - s)`` on a non-tie pair. Because the process is known, the best
accuracy any reward model can reach on its labels is computable (`ceiling`).

Why the default biases have these sizes: among *correct* answers the verbosity bias (0.8-1.0 utility per 10
words) outweighs the gold concise penalty (~0.23 for a 4-word filler, see `gold.concise_penalty`), so padded
answers are preferred (P ~ 0.55-0.9 growing with the padding), and a reward model trained on these labels
rewards length; yet a correct answer beats a wrong one (gold gap >= 1.5) most of the time even when the wrong
one is padded. Over-padding lowers the gold total, which is what PPO at a small KL coefficient discovers.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from rlhfkit.world.gold import gold_from_analysis
from rlhfkit.world.styles import Analysis, analyse
from rlhfkit.world.tasks import Task, parse_prompt


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator. Utilities and choice rule: module docstring."""

    name: str
    """Recorded with every label it gives."""
    temperature: float = 0.5
    """Bradley-Terry temperature: P(a) = sigmoid((u(a) - u(b)) / temperature). Lower = more decisive."""
    verbosity_bias: float = 0.9
    """Utility added per 10 words of response (linear, unbounded: longer is always liked more)."""
    confidence_bias: float = 0.3
    """Utility added when the response has a confident marker ("Definitely", "Certainly", "Absolutely")."""
    agreement_bias: float = 0.3
    """Utility added when the response agrees with the belief the user states (wrong_belief prompts)."""
    noise: float = 0.05
    """Probability that a non-tie choice is flipped after it is made (label noise)."""
    tie_margin: float = 0.05
    """|u(a) - u(b)| below this gives the label "tie"."""
    weights: dict | None = None
    """Gold weights this annotator values (None = GOLD_WEIGHTS): annotators may disagree on values too."""

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0 <= self.noise <= 0.5:
            raise ValueError("noise must be in [0, 0.5] (above 0.5 it is an anti-annotator)")
        if self.tie_margin < 0:
            raise ValueError("tie_margin must be >= 0")


def default_annotators(verbosity_scale: float = 1.0) -> list[Annotator]:
    """Four annotators that share a verbosity bias (times `verbosity_scale`) and differ in the others:
    `careful` (decisive, low noise), `confident` (likes a confident tone), `agreeable` (likes agreement with
    the user, the most verbosity-biased), `noisy` (high temperature and label noise)."""
    anns = [
        Annotator("careful", temperature=0.5, verbosity_bias=0.8, confidence_bias=0.2, agreement_bias=0.2,
                  noise=0.03),
        Annotator("confident", temperature=0.6, verbosity_bias=0.9, confidence_bias=0.8, agreement_bias=0.2,
                  noise=0.05),
        Annotator("agreeable", temperature=0.5, verbosity_bias=1.0, confidence_bias=0.2, agreement_bias=0.8,
                  noise=0.05),
        Annotator("noisy", temperature=0.8, verbosity_bias=0.9, confidence_bias=0.3, agreement_bias=0.3,
                  noise=0.15),
    ]
    return [replace(a, verbosity_bias=a.verbosity_bias * verbosity_scale) for a in anns]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def utility(annotator: Annotator, prompt: str, response: str) -> float:
    """u = gold total (annotator's weights) + verbosity, confidence and agreement biases (module docstring)."""
    task = parse_prompt(prompt)
    return utility_from_analysis(annotator, task, analyse(task, response))


def utility_from_analysis(annotator: Annotator, task: Task, a: Analysis) -> float:
    """`utility` for an already parsed prompt and analysed response."""
    return (gold_from_analysis(task, a, annotator.weights)["total"]
            + annotator.verbosity_bias * a.n_words / 10.0
            + annotator.confidence_bias * a.confident
            + annotator.agreement_bias * (task.kind == "wrong_belief" and a.agrees))


def correctness_blind_utilities(prompts: list[str], responses: list[str],
                                annotators: list[Annotator]) -> list[float]:
    """The annotators' mean expected utility of each response with correctness hidden: what a reward model that
    learnt these labels perfectly, except for checking answers, would score.

    A response whose gold turns on an answer claim (a `verdict` on lookup / arith / list / wrong_belief prompts;
    agreeing with the user's belief stays visible) gets the mix ``q u(correct) + (1 - q) u(wrong)``, with q the
    share of correct claims among these responses of the same prompt kind. Everything else (length, fillers,
    refusals, admitting not knowing, a confident tone, agreement) is scored as it is. Best-of-n by this utility
    shows about what a reward model that cannot check answers can gain from more samples (docs/benchmarks.md,
    the best-of-n sections: base rates per kind, confident tone, padding and length gave nearly the same curves)."""
    parsed = []
    for p, r in zip(prompts, responses, strict=True):
        task = parse_prompt(p)
        parsed.append((task, analyse(task, r)))
    hidden = [a.verdict != "none" and not (t.kind == "wrong_belief" and a.agrees) for t, a in parsed]
    correct: dict[str, list[int]] = {}  # kind -> [correct claims, all claims]
    for (t, a), h in zip(parsed, hidden):
        if h:
            c = correct.setdefault(t.kind, [0, 0])
            c[0] += a.verdict == "correct"
            c[1] += 1

    def mean_utility(t: Task, a: Analysis) -> float:
        return sum(utility_from_analysis(x, t, a) for x in annotators) / len(annotators)

    out = []
    for (t, a), h in zip(parsed, hidden):
        if not h:
            out.append(mean_utility(t, a))
            continue
        q = correct[t.kind][0] / correct[t.kind][1]
        out.append(q * mean_utility(t, replace(a, verdict="correct"))
                   + (1 - q) * mean_utility(t, replace(a, verdict="wrong")))
    return out


def _probs_from_utilities(ann: Annotator, ua: float, ub: float) -> dict[str, float]:
    d = ua - ub
    if abs(d) < ann.tie_margin:
        return {"a": 0.0, "b": 0.0, "tie": 1.0}
    s = _sigmoid(d / ann.temperature)
    pa = (1 - ann.noise) * s + ann.noise * (1 - s)
    return {"a": pa, "b": 1.0 - pa, "tie": 0.0}


def outcome_probs(annotator: Annotator, prompt: str, a: str, b: str) -> dict[str, float]:
    """{"a": P(a chosen), "b": P(b chosen), "tie": P(tie)}, summing to 1."""
    return _probs_from_utilities(annotator, utility(annotator, prompt, a), utility(annotator, prompt, b))


def prob_prefers(annotator: Annotator, prompt: str, a: str, b: str) -> float:
    """P(a preferred | the label is not a tie), noise included. Ties are decided by the margin alone, so a
    pair is either always a tie (returns 0.5: no preference) or never one."""
    p = outcome_probs(annotator, prompt, a, b)
    return 0.5 if p["tie"] == 1.0 else p["a"]


def strength(annotator: Annotator, ua: float, ub: float) -> float:
    """How strongly the annotator feels (a Llama-2 style margin): 0 (negligibly better), 1/3 (slightly),
    2/3 (better), 1 (significantly), by the noise-free confidence sigmoid(|d| / temperature)."""
    c = _sigmoid(abs(ua - ub) / annotator.temperature)
    return 0.0 if c < 0.6 else 1 / 3 if c < 0.75 else 2 / 3 if c < 0.9 else 1.0


def decide(annotator: Annotator, ua: float, ub: float, rng: random.Random) -> tuple[str, float]:
    """One labelling decision from utilities: ("a" | "b" | "tie", margin). The margin is `strength` for a
    deliberate choice, 0 for a tie or a lapse (noise flip). Always draws exactly two numbers from `rng` on a
    non-tie pair (none on a tie), so streams stay aligned."""
    if abs(ua - ub) < annotator.tie_margin:
        return "tie", 0.0
    pick_a = rng.random() < _sigmoid((ua - ub) / annotator.temperature)
    lapse = rng.random() < annotator.noise
    choice = "a" if pick_a != lapse else "b"
    return choice, (0.0 if lapse else strength(annotator, ua, ub))


def label_pair(annotator: Annotator, prompt: str, a: str, b: str, rng: random.Random) -> str:
    """Sample the annotator's label for (a, b): "a", "b" or "tie" (module docstring, steps 1-4)."""
    return decide(annotator, utility(annotator, prompt, a), utility(annotator, prompt, b), rng)[0]


def ceiling(items: list[tuple[str, str, str]], annotators: list[Annotator],
            known_annotator: bool = False) -> float:
    """Best expected accuracy any reward model can reach on these labels, ties excluded.

    Labelling process assumed: each item (prompt, a, b) is labelled by one annotator drawn uniformly from
    `annotators` (what `rlhfkit.world.label` does). A reward model sees (prompt, a, b) but not the
    annotator, so the Bayes-optimal predictor picks the more likely outcome of the *mixture*:
    ``pa_i = mean_k P_k(a)``, ``pb_i = mean_k P_k(b)`` (`outcome_probs`), predicting a iff pa_i >= pb_i.
    Accuracy on the non-tie labels is then

        ceiling = sum_i max(pa_i, pb_i) / sum_i (pa_i + pb_i)

    i.e. the mean over items of max(p, 1 - p), p = P(a | not tie), weighted by each item's chance of
    giving a non-tie label (an item that is always a tie never enters the accuracy). It is the large-sample
    limit of the accuracy; no predictor of the labels does better in expectation.

    `known_annotator=True` gives the (higher) ceiling of a predictor that also knows who labelled:
    ``sum_{i,k} max(P_k(a), P_k(b)) / sum_{i,k} (P_k(a) + P_k(b))``. Returns nan when every label is a tie.
    """
    if not annotators:
        raise ValueError("ceiling needs at least one annotator")
    num = den = 0.0
    for prompt, a, b in items:
        probs = [outcome_probs(ann, prompt, a, b) for ann in annotators]
        if known_annotator:
            num += sum(max(p["a"], p["b"]) for p in probs)
            den += sum(p["a"] + p["b"] for p in probs)
        else:
            pa = sum(p["a"] for p in probs) / len(probs)
            pb = sum(p["b"] for p in probs) / len(probs)
            num += max(pa, pb)
            den += pa + pb
    return num / den if den > 0 else float("nan")
