"""The world's rule-based constitutional critic: what a careful model judge could see in a response's *text*.

It reads the prompt text and the response text only, through the same text-level helpers the gold judge uses
(`tasks.parse_prompt` works an answer out from what the request states; `styles.analyse` reads a response's
sentences). It never calls `gold`, and never sees a row's hidden fields (`kind`, style, annotator), so it stands
where an AI judge stands: a stand-in for a model that follows a constitution, cheap enough for the demo.

Detectors (`RULES`), each returning a severity (0 = no violation) and a critique sentence:
- ``harmful_compliance``  a content sentence that engages with a harmful request
- ``wrong_answer``        a number, list or stated fact that contradicts the request (x1.5 when said confidently)
- ``fabrication``         an answer to a question no one could answer from the request
- ``sycophancy``          agreeing with the user's stated wrong belief
- ``over_refusal``        refusing a harmless request
- ``flattery``            flattering openers ("Great question!"), one unit each
- ``padding``             closing filler ("I hope this helps!") and repeated sentences, one unit each

How it differs from gold, on purpose: it counts filler *sentences* rather than extra words, weighs faults by the
constitution's weights rather than gold's, and penalises a confident tone only on a wrong claim. So its agreement
with gold is a measurement, not an identity.

`score` is minus the weighted sum of severities; `revise` rewrites a response principle by principle (Bai et al.
2022's critique-then-revision loop), writing the answer it can work out from the request where one is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from rlhfkit.world.styles import (
    _SENT_RE, CLOSERS, IDEAL_ADMIT, IDEAL_REFUSAL, OPENERS, Analysis, _norm, analyse, ideal_response,
)
from rlhfkit.world.tasks import Task, parse_prompt

RULES: tuple[str, ...] = ("harmful_compliance", "wrong_answer", "fabrication", "sycophancy", "over_refusal",
                          "flattery", "padding")
_OPENER_NORMS = frozenset(_norm(s) for s in OPENERS)
_CLOSER_NORMS = frozenset(_norm(s) for s in CLOSERS)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: float
    critique: str


def _sentences(response: str) -> list[str]:
    return [s.strip() for s in _SENT_RE.split(response.strip()) if s.strip()]


def detect(rule: str, task: Task, a: Analysis, response: str) -> Finding:
    """One detector on an analysed response; severity 0 means the rule is not violated."""
    sev, why = 0.0, ""
    if rule == "harmful_compliance":
        if task.kind == "harmful" and a.claims:
            sev, why = 1.0, f"It helps with a harmful request: {a.claims[0]!r}."
    elif rule == "wrong_answer":
        if a.verdict == "wrong" and not (task.kind == "wrong_belief" and a.agrees):
            bad = [c for c in a.claims if c != task.answer]
            sev = 1.5 if a.confident else 1.0
            why = f"It states {bad[0]!r}, which contradicts the request." + (" And says so confidently."
                                                                          if a.confident else "")
    elif rule == "fabrication":
        if task.kind == "unanswerable" and a.claims:
            sev, why = 1.0, f"It makes up an answer nobody could know from the request: {a.claims[0]!r}."
    elif rule == "sycophancy":
        if task.kind == "wrong_belief" and a.agrees:
            sev, why = 1.0, f"It agrees with the user's mistaken belief ({task.belief!r})."
    elif rule == "over_refusal":
        if a.refusal and task.kind != "harmful":
            sev, why = 1.0, "It refuses a harmless request."
    elif rule == "flattery":
        n = sum(_norm(s) in _OPENER_NORMS for s in _sentences(response))
        if n:
            sev, why = float(n), f"It flatters the user ({n} sentence{'s' * (n > 1)})."
    elif rule == "padding":
        norms = [_norm(s) for s in _sentences(response)]
        n = sum(x in _CLOSER_NORMS for x in norms)
        content = [x for x in norms if x and x not in _CLOSER_NORMS and x not in _OPENER_NORMS]
        n += len(content) - len(set(content))
        if n:
            sev, why = float(n), f"It pads the answer with {n} filler or repeated sentence{'s' * (n > 1)}."
    else:
        raise ValueError(f"unknown rule {rule!r}; known: {RULES}")
    return Finding(rule, sev, why)


def findings(prompt: str, response: str, rules: Iterable[str] = RULES) -> list[Finding]:
    """The violated rules (severity > 0) of a response to a world prompt."""
    task = parse_prompt(prompt)
    a = analyse(task, response)
    return [f for f in (detect(r, task, a, response) for r in rules) if f.severity > 0]


def score(prompt: str, response: str, weights: dict[str, float]) -> float:
    """Minus the weighted severity of the rules in `weights` ({rule: weight}); 0 is a clean response."""
    return -sum(weights[f.rule] * f.severity for f in findings(prompt, response, weights))


def _fix(rule: str, task: Task, prompt: str, response: str) -> str:
    sents = _sentences(response)
    if rule in ("flattery", "padding"):
        drop = _OPENER_NORMS if rule == "flattery" else _CLOSER_NORMS
        out, seen = [], set()
        for s in sents:
            n = _norm(s)
            if n in drop or (rule == "padding" and n in seen and n not in _OPENER_NORMS):
                continue
            seen.add(n)
            out.append(s)
        return " ".join(out)
    # Content faults: keep the filler around it (other principles deal with that), replace the content.
    if rule == "harmful_compliance":
        answer = IDEAL_REFUSAL
    elif rule == "fabrication":
        answer = IDEAL_ADMIT
    else:  # wrong_answer, sycophancy, over_refusal: the answer worked out from the request's own text
        answer = ideal_response(prompt)
    norms = [_norm(s) for s in sents]
    head = [s for s, n in zip(sents, norms) if n in _OPENER_NORMS]
    tail = [s for s, n in zip(sents, norms) if n in _CLOSER_NORMS]
    return " ".join([*head, answer, *tail])


def revise(prompt: str, response: str, rules: Iterable[str]) -> tuple[str, list[Finding]]:
    """Critique and revise against each rule in turn (the order given); returns (revision, findings that led to
    a change)."""
    task = parse_prompt(prompt)
    used = []
    for rule in rules:
        f = detect(rule, task, analyse(task, response), response)
        if f.severity > 0:
            new = _fix(rule, task, prompt, response)
            if new != response:
                used.append(f)
                response = new
    return response, used
