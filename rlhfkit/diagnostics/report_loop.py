"""`rlhfkit loop`'s report (loop_report.html): the rounds of iterative RLHF, from its summary.json.

Per round: the reward models' accuracy on the newest policy's held-out samples before and after retraining (the
last round's reward model against the new one, on the same pairs), and the policy's gold with its 95% interval.
Self-contained like `rlhfkit report`: inline CSS, plots as base64 PNGs, every string escaped."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from rlhfkit.diagnostics.report_html import CSS, Plots, _num, esc, fmt, table


def _ci(d: dict | None, mean: str = "accuracy") -> str:
    """"m [low, high]" from a dict with `mean`/`accuracy`, `low` and `high`, else a dash."""
    if not isinstance(d, dict) or _num(d.get(mean)) is None:
        return fmt(None)
    lo, hi = _num(d.get("low")), _num(d.get("high"))
    return f"{d[mean]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def _signed(d: dict | None) -> str:
    if not isinstance(d, dict) or _num(d.get("mean")) is None:
        return fmt(None)
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _rm_part(r: dict, key: str) -> dict:
    """rm_eval's `key`, from its larger `measure` set where the round has one."""
    rm = r.get("rm_eval") or {}
    return ((rm.get("measure") or rm).get(key)) or {}


def _rm_rows(rm: dict) -> list[str]:
    """before / after / change / pairs by gold's order, before / after / change by the labels, labels vs gold."""
    g, lab = rm.get("gold") or {}, rm.get("labels") or {}
    return [_ci(g.get("before")), _ci(g.get("after")), _signed(g.get("change")), fmt(g.get("n")),
            _ci(lab.get("before")), _ci(lab.get("after")), _signed(lab.get("change")), fmt(lab.get("n")),
            _ci(rm.get("labels_vs_gold"))]


RM_HEAD = ["RM acc before (gold order)", "RM acc after (gold order)", "change [95% CI]", "pairs",
           "RM acc before (labels)", "RM acc after (labels)", "change [95% CI]", "pairs", "labels agree with gold"]


def replicas_note(summary: dict) -> str:
    """What "before" and "after" are when the loop measured reward-model replicas (`rm_replicas` > 1)."""
    n = max((len(w.get("after", {}).get("replicas") or []) for r in summary.get("rounds", [])
             for w in (_rm_part(r, "gold"), _rm_part(r, "labels"))), default=0)
    if n < 2:
        return ""
    return (f"<p>Each side is the mean accuracy of {n} reward models trained on the same labels with other seeds "
            "(the round's own and its replicas); the change's interval resamples both the prompts and the models.</p>")


def rounds_table(summary: dict) -> str:
    rows = []
    for r in summary.get("rounds", []):
        ev = r.get("eval") or {}
        gold = {"mean": ev.get("gold"), "low": (ev.get("gold_ci") or [None])[0],
                "high": (ev.get("gold_ci") or [None, None])[1]}
        rows.append([str(r.get("round")), *_rm_rows(r.get("rm_eval") or {}), _ci(gold, "mean"),
                     _ci(ev.get("win_rate_vs_start"), "mean"), fmt(_num(ev.get("kl_to_start"))),
                     fmt(_num(ev.get("proxy"))), fmt(_num(ev.get("mean_length")), 1)])
    return table(["round", *RM_HEAD, "policy gold [95% CI]", "win rate vs start", "KL to start", "proxy", "length"],
                 rows)


def measure_table(summary: dict) -> str:
    """Step 3's measurement again on the world's held-out evaluation prompts (`measure` in each round's rm_eval)."""
    rows = [[str(r.get("round")), fmt((r["rm_eval"]["measure"]).get("prompts")), *_rm_rows(r["rm_eval"]["measure"])]
            for r in summary.get("rounds", []) if isinstance((r.get("rm_eval") or {}).get("measure"), dict)]
    if not rows:
        return ""
    firsts = []  # from round 3 on: round 1's reward model on the same pairs, against the new one
    for r in summary.get("rounds", []):
        m = (r.get("rm_eval") or {}).get("measure")
        parts = [f"{name} {_ci(w.get('first'))} -> {_ci(w.get('after'))}, {_signed(w.get('change_from_first'))}"
                 for name, w in (("gold order", (m or {}).get("gold")), ("labels", (m or {}).get("labels")))
                 if isinstance(w, dict) and isinstance(w.get("first"), dict)]
        if parts:
            firsts.append(f"<li>round {esc(r.get('round'))}: {esc('; '.join(parts))}</li>")
    first = ("<p>Round 1's reward model (it learnt from the start policy's samples alone) against the new one, on "
             f"the same pairs (paired change, 95% bootstrap CI):</p><ul>{''.join(firsts)}</ul>" if firsts else "")
    return ("<p>The same reward models on K samples of the current policy for held-out evaluation prompts (never "
            "trained on), labelled by the simulated annotators:</p>" + table(["round", "prompts", *RM_HEAD], rows)
            + first)


def rounds_plot(summary: dict, plots: Plots) -> str:
    if not plots.ok:
        return plots.missing()
    rounds = summary.get("rounds", [])
    fig, (ax1, ax2) = plots.figure(ncols=2)
    for key, color, dx in (("before", "#d62728", -0.06), ("after", "#2ca02c", 0.06)):
        pts = [(r["round"], _rm_part(r, "gold").get(key) or _rm_part(r, "labels").get(key)) for r in rounds]
        pts = [(k, d) for k, d in pts if isinstance(d, dict) and _num(d.get("accuracy")) is not None]
        if pts:
            ax1.errorbar([k + dx for k, _ in pts], [d["accuracy"] for _, d in pts],
                         yerr=[[d["accuracy"] - d["low"] for _, d in pts], [d["high"] - d["accuracy"] for _, d in pts]],
                         marker="o", capsize=3, color=color,
                         label=f"{key} retraining" + (" (last round's RM)" if key == "before" else " (new RM)"))
    agree = [(r["round"], _rm_part(r, "labels_vs_gold")) for r in rounds]
    agree = [(k, d["accuracy"]) for k, d in agree if isinstance(d, dict) and _num(d.get("accuracy")) is not None]
    if agree:
        ax1.plot([k for k, _ in agree], [a for _, a in agree], "s--", color="#7f7f7f", label="labels agree with gold")
    ax1.axhline(0.5, color="#bbbbbb", lw=0.8)  # chance
    ax1.set(xlabel="round", ylabel="pairwise accuracy (gold order)", title="reward model on the newest policy's samples")
    ax1.legend(fontsize=8)
    pts = [(r["round"], r["eval"]) for r in rounds if _num((r.get("eval") or {}).get("gold")) is not None]
    if pts:
        ax2.errorbar([k for k, _ in pts], [e["gold"] for _, e in pts], yerr=[1.96 * e["gold_se"] for _, e in pts],
                     marker="o", capsize=3, color="#1f77b4")
    ax2.set(xlabel="round (0: start policy)", ylabel="gold", title="policy gold on held-out prompts (95% CI)")
    ax1.set_xticks([r["round"] for r in rounds if r["round"]])
    ax2.set_xticks([r["round"] for r in rounds])
    return plots.img(fig, "reward-model accuracy and policy gold by round")


def section_rounds(summary: dict, plots: Plots | None = None) -> str:
    """The "Rounds" section: table, curves and the gold comparisons."""
    if not summary.get("rounds"):
        return ""
    plots = plots or Plots()
    comp = "".join(f"<li>{esc(name.replace('_', ' '))}: {_signed(d)} (paired over prompts, 95% bootstrap CI)</li>"
                   for name, d in (summary.get("comparisons") or {}).items())
    return ('<h2 id="rounds">Rounds</h2><p>Each round samples the current policy, labels the samples, retrains the '
            "reward model on every label so far and trains the next policy from the current one. <em>Before</em> "
            "is the last round's reward model on the newest policy's held-out samples, <em>after</em> the retrained "
            "one on the same pairs; round 0 is the start policy.</p>" + replicas_note(summary)
            + rounds_table(summary) + measure_table(summary) + rounds_plot(summary, plots)
            + (f"<ul>{comp}</ul>" if comp else ""))


def write(summary: dict, path: str | Path, title: str = "rlhfkit loop") -> Path:
    path = Path(path)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = section_rounds(summary)
    path.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
                    f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p class=\"sub\">generated {esc(when)}"
                    f"</p>{body}</body></html>\n", encoding="utf-8")
    return path
