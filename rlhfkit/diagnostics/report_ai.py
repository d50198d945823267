"""The report's "AI feedback" section: the demo's RLAIF stage (summary.json `ai_feedback`, docs/ai-feedback.md).

The judge's labels against gold and against the annotators, and the gold of the policy trained on them beside the
human-label policy's. Every comparison is read off 95% intervals, never hard-coded: an interval wholly above or below
the other is a difference, overlapping ones are "indistinguishable at this sample size"."""

from __future__ import annotations

from rlhfkit.diagnostics.metrics import wilson_interval
from rlhfkit.diagnostics.report_html import _num, esc, fmt, table

Interval = tuple[float, float]

# (row label, accuracy key, kappa key, key of its pair count in `pairs`)
AGREEMENT_ROWS = (
    ("AI judge vs gold", "judge_gold_accuracy", "judge_gold_kappa", "judge_vs_gold"),
    ("AI judge vs annotators", "judge_annotator_accuracy", "judge_annotator_kappa", "judge_vs_annotators"),
    ("annotators vs gold", "annotator_gold_accuracy", "annotator_gold_kappa", "annotators_vs_gold"),
)
CLOSER = {"above": "closer to gold than the annotators' labels are",
          "below": "further from gold than the annotators' labels are",
          "overlap": "as close to gold as the annotators' labels, within the noise of this sample"}
JUDGES = {"rule": "the world's rule-based constitutional judge", "hf": "a local language model",
          "http": "a language model behind an HTTP endpoint"}
VERDICT = {"above": "AI labels beat the human ones", "below": "AI labels trail the human ones",
           "overlap": "AI labels and human labels are indistinguishable at this sample size"}


def interval_order(a: Interval, b: Interval) -> str:
    """"above" / "below" when interval a lies wholly above / below interval b, else "overlap"."""
    return "above" if a[0] > b[1] else "below" if a[1] < b[0] else "overlap"


def accuracy_interval(acc, n) -> Interval | None:
    """95% Wilson interval of an accuracy over `n` pairs (None without both)."""
    a, k = _num(acc), int(_num(n) or 0)
    return wilson_interval(a * k, k) if a is not None and k > 0 else None


def _win_rate(p: dict) -> tuple[float, float, float] | None:
    w = p.get("win_rate_vs_sft") if isinstance(p, dict) else None
    v = tuple(_num(w.get(k)) for k in ("mean", "low", "high")) if isinstance(w, dict) else (None,)
    return None if None in v else v  # type: ignore[return-value]


def _agreement(ai: dict, pairs: dict) -> tuple[str, dict[str, Interval | None]]:
    rows, cis = [], {}
    for name, acc, kappa, n in AGREEMENT_ROWS:
        ci = cis[acc] = accuracy_interval(ai.get(acc), pairs.get(n))
        a = _num(ai.get(acc))
        rows.append([esc(name), f"{a:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else fmt(a), fmt(_num(ai.get(kappa))),
                     fmt(pairs.get(n))])
    return table(["labels compared", "accuracy [95% CI]", "Cohen's kappa", "pairs decided by both"], rows), cis


def _policies(ai: dict, rm: dict) -> str:
    pol = ai.get("policies") or {}
    rows = []
    for role, source in (("rlaif", "the AI judge (RLAIF)"), ("human", "the annotators")):
        p = pol.get(role) or {}
        g, se, wr = _num(p.get("gold")), _num(p.get("gold_se")), _win_rate(p)
        rows.append([f"<b>{esc(p.get('policy', role))}</b>", esc(source),
                     fmt(g) + (f" &plusmn; {se:.3f}" if g is not None and se is not None else ""),
                     f"{wr[0]:.3f} [{wr[1]:.3f}, {wr[2]:.3f}]" if wr else fmt(None)])
    out = ("<p>The two DPO policies, judged by gold on the held-out prompts (gold with its standard error; win rate "
           "against SFT with its 95% interval):</p>"
           + table(["policy", "trained on labels from", "gold", "win rate vs SFT [95% CI]"], rows))
    rm_ai = ai.get("rm") or {}
    if rm_ai:
        out += (f"<p>Reward models on the annotators' held-out labels: trained on the judge's labels "
                f"{fmt(_num(rm_ai.get('accuracy')))}, on the annotators' {fmt(_num(rm.get('accuracy')))} "
                f"(the annotator ceiling {fmt(_num(rm_ai.get('ceiling')))}).</p>")
    r, h = _win_rate(pol.get("rlaif") or {}), _win_rate(pol.get("human") or {})
    if r and h:
        out += (f"<p><b>{VERDICT[interval_order(r[1:], h[1:])]}</b>: against SFT the RLAIF policy wins "
                f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}] and the human-label policy {h[0]:.3f} "
                f"[{h[1]:.3f}, {h[2]:.3f}] (win rates, ties counting half).</p>")
    return out


def _disagreements(ai: dict) -> str:
    ex = [d for d in ai.get("disagreements") or [] if isinstance(d, dict)]
    if not ex:
        return ""
    rows = [[f'<div class="text">{esc(d.get("prompt", ""))}</div>',
             f'<div class="text resp">{esc(d.get("judge_prefers", ""))}</div>',
             f'<div class="text resp">{esc(d.get("annotators_prefer", ""))}</div>',
             esc(d.get("gold_sides_with") or "neither (a gold tie)")] for d in ex]
    return ("<p>Pairs the judge and the annotators decided differently (answers exactly as the models wrote them, "
            "shown as plain text):</p>"
            + table(["prompt", "the judge prefers", "the annotators prefer", "gold sides with"], rows, "samples"))


def section_ai_feedback(summary: dict) -> str:
    ai = summary.get("ai_feedback")
    if not isinstance(ai, dict):
        return ""
    pairs, longer = ai.get("pairs") or {}, ai.get("prefers_longer") or {}
    agreement, cis = _agreement(ai, pairs)
    out = ['<section id="ai"><h2>9. AI feedback</h2>',
           f"<p>Instead of the annotators, an AI judge ({esc(JUDGES.get(ai.get('judge'), ai.get('judge')))}, which "
           "reads only the prompt and answer text and checks them against the constitution's principles) labels the "
           "same pairs the annotators labelled, each in both orders with the two verdicts averaged. A reward model and a DPO policy then learn from its labels "
           "with the same settings as the human-label ones (RLAIF). Accuracy counts the pairs both sides decided, "
           "with a 95% Wilson interval.</p>", agreement,
           f"<p>Of {fmt(pairs.get('annotated'))} annotated pairs the judge found {fmt(pairs.get('judge_ties'))} "
           f"equal (ties, left out of its labels), leaving {fmt(pairs.get('train'))} to train on. Position "
           f"consistency (the winner did not depend on the order shown): "
           f"{fmt(_num(ai.get('position_consistency')))}. Share of pairs (answers of different lengths) where the "
           f"longer answer is preferred: judge {fmt(_num(longer.get('judge')))}, annotators "
           f"{fmt(_num(longer.get('annotators')))}, gold {fmt(_num(longer.get('gold')))}.</p>"]
    judge_ci, ann_ci = cis["judge_gold_accuracy"], cis["annotator_gold_accuracy"]
    if judge_ci and ann_ci:
        oracle = (" This judge applies the rules the world itself was built from, so here it is close to an oracle; a "
                  "model judge on real data is not." if ai.get("judge") == "rule" else "")
        out.append(f"<p>The judge's labels are {CLOSER[interval_order(judge_ci, ann_ci)]}.{oracle}</p>")
    out += [_policies(ai, summary.get("rm") or {}), _disagreements(ai), "</section>"]
    return "\n".join(x for x in out if x)
