"""The sections of `rlhfkit report` (docs/diagnostics.md): each takes the demo's summary.json and/or the runs found,
and returns its HTML, or "" when it has nothing to show (so gold-only parts vanish for runs without a gold judge)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rlhfkit.diagnostics.report_html import COLORS, Plots, _num, esc, fmt, method_of, table

if TYPE_CHECKING:
    from rlhfkit.diagnostics.report import Run


STEPS = [
    ("Pretrain a base model", ("tokenizer", "world", "corpus", "pretrain", "base"),
     "A small language model learns the world's text, good and bad answers alike: it is not aligned."),
    ("Supervised fine-tuning (SFT)", ("sft",),
     "The base model imitates demonstrations of good answers. SFT is the starting point and the reference of "
     "every later step."),
    ("Preference labels", ("sample", "candidates", "label", "pairs", "annot"),
     "SFT answers are compared in pairs by simulated annotators, who prefer better answers but are also biased "
     "(they like longer and more confident answers)."),
    ("Reward model", ("rm", "reward"),
     "A model learns to predict the annotators' choices. It becomes the proxy that RL optimises, and it inherits "
     "their biases."),
    ("Policy optimisation", ("ppo", "dpo", "bon", "best", "grpo", "rloo"),
     "PPO maximises the reward model with a KL penalty to SFT (one run per KL coefficient), DPO learns from the pairs "
     "directly, best-of-n picks the highest-reward of n samples."),
    ("Evaluation and report", ("eval", "report", "gold"),
     "Every policy is judged on held-out prompts by the gold judge the policies never saw."),
]


def _stage_step(stage: str) -> int | None:
    s = stage.lower()
    # the first matching step by specificity: policy-optimisation names before "rm" (e.g. "rloo" starts with "r")
    for i in (4, 3, 1, 2, 0, 5):
        if any(s.startswith(k) for k in STEPS[i][1]):
            return i
    return None


def section_pipeline(summary: dict, runs: list[Run]) -> str:
    out = ['<section id="pipeline"><h2>1. The pipeline in six steps</h2>']
    if summary:
        stages = summary.get("stages", {}) or {}
        policies = summary.get("policies", {}) or {}
        rm = summary.get("rm", {}) or {}
        produced: dict[int, list[str]] = {i: [] for i in range(6)}
        seconds: dict[int, float] = {i: 0.0 for i in range(6)}
        for name, st in stages.items():
            i = _stage_step(name)
            if i is not None:
                sec = _num((st or {}).get("seconds")) if isinstance(st, dict) else None
                seconds[i] += sec or 0.0
        for name, p in policies.items():
            g = _num(p.get("gold"))
            line = f"policy <b>{esc(name)}</b>" + (f": gold {g:.3f}" if g is not None else "")
            i = {"base": 0, "sft": 1}.get(method_of(name), 4)
            produced[i].append(line)
        if rm:
            produced[3].append(f"reward model: held-out accuracy {fmt(_num(rm.get('accuracy')))} "
                               f"(ceiling {fmt(_num(rm.get('ceiling')))})")
        labels = summary.get("labels") or {}
        if isinstance(labels, dict) and labels.get("n") is not None:
            produced[2].append(f"{fmt(labels.get('n'))} labelled pairs")
        if policies:
            produced[5].append(f"{len(policies)} policies judged; this report")
        out.append('<ol class="steps">')
        for i, (title, _, why) in enumerate(STEPS):
            sec = f'<span class="secs">{seconds[i]:.0f} s</span>' if seconds[i] else ""
            items = "".join(f"<li>{x}</li>" for x in produced[i]) or "<li>&ndash;</li>"
            out.append(f"<li><h3>{esc(title)} {sec}</h3><p>{esc(why)}</p><ul>{items}</ul></li>")
        out.append("</ol>")
        total = sum(_num((s or {}).get("seconds")) or 0.0 for s in stages.values() if isinstance(s, dict))
        if total:
            out.append(f'<p class="note">Whole pipeline: {total / 60:.1f} minutes.</p>')
    else:
        out.append("<p>These are your own run directories (no demo summary.json): the steps below are the runs "
                   "found, in the order given. Parts that need the built-in world's gold judge are left out.</p>")
        rows = []
        for r in runs:
            last = r.metrics[-1]["step"] if r.metrics and "step" in r.metrics[-1] else None
            rows.append([esc(r.name), esc(method_of(r.name)), fmt(last), fmt(len(r.monitor)), fmt(len(r.alarms))])
        out.append(table(["run", "method", "last step", "monitor evaluations", "alarms"], rows))
    out.append("</section>")
    return "\n".join(out)


def section_glance(summary: dict) -> str:
    policies = summary.get("policies", {}) or {}
    if not policies:
        return ""
    rows = []
    for name, p in policies.items():
        wr = p.get("win_rate_vs_sft")
        wr_s = "&ndash;"
        if isinstance(wr, dict) and _num(wr.get("mean")) is not None:
            wr_s = f"{wr['mean']:.2f} [{fmt(_num(wr.get('low')), 2)}, {fmt(_num(wr.get('high')), 2)}]"
        rows.append([f"<b>{esc(name)}</b>", fmt(_num(p.get("gold"))), wr_s, fmt(_num(p.get("kl_to_sft"))),
                     fmt(_num(p.get("proxy"))), fmt(_num(p.get("mean_length")), 1)])
    return ('<section id="glance"><h2>2. Results at a glance</h2>'
            "<p><b>Gold</b> is the world's true quality score (1.0 = the ideal answer), which no policy saw during "
            "training. <b>Win rate vs SFT</b>: how often the policy's answer scores higher in gold than SFT's on "
            "the same prompt (ties count half), with a 95% interval; above 0.5 means better than SFT. "
            "<b>KL to SFT</b>: how far the policy moved from SFT, in nats per answer. <b>Proxy</b>: the reward "
            "model's score, which RL optimised.</p>"
            + table(["policy", "gold", "win rate vs SFT [95% CI]", "KL to SFT", "proxy (RM)", "length (tokens)"],
                    rows) + "</section>")


def section_rm(summary: dict, plots: Plots) -> str:
    rm = summary.get("rm") or {}
    if not rm:
        return ""
    acc, ceil = _num(rm.get("accuracy")), _num(rm.get("ceiling"))
    out = ['<section id="rm"><h2>3. The reward model</h2>',
           "<p>The reward model predicts which of two answers the annotators prefer. Because the annotators are "
           "simulated, the best accuracy any model can reach on their (noisy, tied) labels is known: the "
           "<b>ceiling</b>. The <b>verbosity probe</b> is the correlation between reward and answer length: the "
           "annotators like long answers, so a reward model that learned them rewards length, which PPO can "
           "exploit.</p>"]
    if plots.ok and acc is not None:
        fig, (ax,) = plots.figure(1, 5.5, 2.6)
        names, vals = ["reward model", "annotator ceiling"], [acc, ceil if ceil is not None else float("nan")]
        ax.barh(names, vals, color=["#1f77b4", "#bbbbbb"])
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xlim(0.4, 1.0)
        ax.set_xlabel("held-out accuracy on annotator labels (0.5 = chance)")
        for y, v in enumerate(vals):
            if math.isfinite(v):
                ax.text(v + 0.005, y, f"{v:.3f}", va="center")
        out.append(plots.img(fig, "reward-model accuracy beside the annotator ceiling"))
    out.append(table(["accuracy", "ceiling", "calibration error (ECE)", "verbosity probe: corr(reward, length)"],
                     [[fmt(acc), fmt(ceil), fmt(_num(rm.get("ece"))), fmt(_num(rm.get("length_correlation")))]]))
    out.append("</section>")
    return "\n".join(out)


CURVE_GROUPS = ("train/loss", "rewards/", "rollout/", "kl/", "monitor/gold", "policy/")
PREFERRED = ("train/loss", "rewards/margin", "rewards/accuracy", "rollout/score", "rollout/reward", "kl/sequence",
             "kl/mean", "rollout/length", "monitor/gold")


def pick_curves(metrics: list[dict], n: int) -> list[str]:
    counts: dict[str, int] = {}
    for rec in metrics:
        for k, v in rec.items():
            if k != "step" and _num(v) is not None:
                counts[k] = counts.get(k, 0) + 1
    keys = [k for k in counts if counts[k] >= 2]
    chosen = [k for k in PREFERRED if k in keys]
    for g in CURVE_GROUPS:
        if not any(k.startswith(g) for k in chosen):
            chosen += sorted(k for k in keys if k.startswith(g))[:1]
    chosen += sorted(k for k in keys if k not in chosen and not k.startswith(("train/lr", "perf/", "time/")))
    out: list[str] = []
    for k in chosen:
        if k not in out:
            out.append(k)
    return out[:n]


def section_curves(runs: list[Run], plots: Plots, max_curves: int) -> str:
    with_metrics = [r for r in runs if r.metrics]
    if not with_metrics:
        return ""
    out = ['<section id="curves"><h2>4. Training curves</h2>',
           "<p>From each run's <code>metrics.jsonl</code>, against the optimizer step. A falling loss means the "
           "model fits its objective; rewards and KL show how far the policy moved.</p>"]
    if not plots.ok:
        out.append(plots.missing())
    for r in with_metrics:
        keys = pick_curves(r.metrics, max_curves)
        if not keys:
            continue
        out.append(f"<h3>{esc(r.label)}</h3>")
        if plots.ok:
            fig, axes = plots.figure(len(keys), 3.2, 2.5)
            for ax, k in zip(axes, keys):
                pts = [(rec["step"], _num(rec.get(k))) for rec in r.metrics if "step" in rec]
                pts = [(s, v) for s, v in pts if v is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#1f77b4", lw=1.2)
                ax.set_title(k, fontsize=9)
                ax.set_xlabel("step", fontsize=8)
                ax.tick_params(labelsize=7)
            out.append(plots.img(fig, f"training curves of {r.name}: {', '.join(keys)}"))
    out.append("</section>")
    return "\n".join(out)


def section_overopt(runs: list[Run], plots: Plots, has_gold: bool) -> str:
    mon = [r for r in runs if any(_num(m.get("kl")) is not None for m in r.monitor)]
    if not mon:
        return ""
    out = ['<section id="overopt"><h2>5. Over-optimisation: reward against distance from SFT</h2>',
           "<p>Every few steps the monitor samples the policy on held-out prompts and records the <b>proxy</b> "
           "reward (the reward model being optimised)"
           + (", the <b>gold</b> reward (the true quality)" if has_gold else "")
           + " and the KL divergence from the reference policy. Plotted against sqrt(KL), as in Gao, Schulman "
           "&amp; Hilton (2022): the proxy keeps rising as the policy moves away"
           + (", while gold rises, peaks and then falls: the policy is exploiting the reward model's errors "
              "rather than getting better. A larger KL coefficient keeps the policy closer to SFT."
              if has_gold else ". Without a gold judge, watch for the proxy rising while length drifts or "
              "diversity collapses (sections 7 and 8).")
           + "</p>"]
    if not plots.ok:
        out.append(plots.missing())
    else:
        keys = (["gold"] if has_gold and any("gold" in m for r in mon for m in r.monitor) else []) + ["proxy"]
        fig, axes = plots.figure(len(keys), 5.0, 3.6)
        cmap = plots.plt.get_cmap("viridis")
        ordered = sorted(mon, key=lambda r: (r.kl_coef is None, r.kl_coef or 0.0, r.name))
        for j, r in enumerate(ordered):
            color = cmap(j / max(1, len(ordered) - 1) * 0.85)
            for ax, key in zip(axes, keys):
                pts = [(math.sqrt(max(0.0, m["kl"])), _num(m.get(key))) for m in r.monitor if _num(m.get("kl")) is not None]
                pts = [p for p in pts if p[1] is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1.3, color=color,
                            label=r.label)
        for ax, key in zip(axes, keys):
            ax.set_xlabel("sqrt(KL to reference)  [sqrt(nats)]")
            ax.set_ylabel(f"{key} reward (held-out)")
            ax.set_title(f"{key} reward", fontsize=10)
            ax.grid(alpha=0.3)
        axes[-1].legend(fontsize=7)
        out.append(plots.img(fig, "gold and proxy reward against sqrt(KL) for each KL coefficient"))
    out.append("</section>")
    return "\n".join(out)


def section_frontier(summary: dict, plots: Plots) -> str:
    frontier = summary.get("frontier") or {}
    pts = {n: f for n, f in frontier.items() if isinstance(f, dict) and _num(f.get("kl_to_sft")) is not None
           and _num(f.get("gold")) is not None}
    if not pts:
        return ""
    out = ['<section id="frontier"><h2>6. The frontier: gold reward against KL to SFT</h2>',
           "<p>Each point is one policy: how much better it is (gold, up) for how far it moved from SFT (KL, "
           "right). Up and to the left is better: more quality for less change. As in the DPO paper (Rafailov "
           "et al. 2023, Fig. 2), PPO at several KL coefficients, DPO and best-of-n share one plot. Best-of-n's "
           "KL is analytic: log n - (n-1)/n.</p>"]
    if not plots.ok:
        out.append(plots.missing())
    else:
        import numpy as np

        fig, (ax,) = plots.figure(1, 7.0, 4.2)
        by_method: dict[str, list[tuple[float, float, str]]] = {}
        for n, f in pts.items():
            by_method.setdefault(method_of(n), []).append((f["kl_to_sft"], f["gold"], n))
        for m, ps in sorted(by_method.items()):
            ps.sort()
            ax.plot([p[0] for p in ps], [p[1] for p in ps], "o-" if len(ps) > 1 else "o", color=COLORS.get(m),
                    label=m.upper() if m != "bon" else "best-of-n", ms=6, lw=1, clip_on=False)
            for x, y, n in ps:
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        # spaced by sqrt(KL), as in section 5 (Gao et al. 2022): on a linear axis the small-KL policies (DPO,
        # best-of-n, the large coefficient) crowd into one corner next to the small coefficient's KL of 10-30
        ax.set_xscale("function", functions=(lambda k: np.sqrt(np.maximum(k, 0)), np.square))
        kl_max = max([1.0] + [f["kl_to_sft"] for f in pts.values()])
        ax.set_xlim(0, kl_max * 1.1)
        ticks = [t for t in (0, 0.25, 1, 2.5, 5, 10, 20, 40, 80) if t <= kl_max * 1.1]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("KL to SFT (nats per response; axis spaced by its square root)")
        ax.set_ylabel("gold reward (held-out)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(plots.img(fig, "frontier: gold reward against KL to SFT for every policy"))
    rows = [[esc(n), fmt(_num(f.get("kl_to_sft"))), fmt(_num(f.get("gold"))), fmt(_num(f.get("proxy")))]
            for n, f in pts.items()]
    out.append(table(["policy", "KL to SFT", "gold", "proxy"], rows))
    out.append(bon_selectors_part(summary.get("bon_selectors"), plots))
    out.append("</section>")
    return "\n".join(out)


SELECTORS = [("reward_model", "the reward model (what best-of-n uses)", "#9467bd"),
             ("annotators_blind", "the annotators' utility, correctness hidden (a perfect reward model that cannot "
              "check answers)", "#2ca02c"),
             ("annotators", "the annotators' own expected utility (a perfect reward model of these labels)", "#ff7f0e"),
             ("gold", "the gold judge (the best this pool allows)", "#7f7f7f")]


def bon_selectors_part(sel: dict | None, plots: Plots) -> str:
    """Best-of-n with three choosers on the same samples (the world's demo only): whether a fall of best-of-n's gold
    with n is the reward model's error or the annotators' bias."""
    if not isinstance(sel, dict) or not sel.get("n"):
        return ""
    ns = sel["n"]
    pickers = [p for p in SELECTORS if isinstance(sel.get(p[0]), list)]  # older summaries have three pickers
    out = ["<h3>Who picks the best of n?</h3>",
           f"<p>The same SFT samples, with the best of n picked {len(pickers)} ways. Each value is the expected gold "
           "over every way of drawing n of the samples per prompt (not one draw), so the curves are smooth. The "
           "annotators' utility includes their biases (they like longer answers): if best-of-n by it keeps "
           "improving while the reward model's choice gets worse, the loss is the reward model's error, what it "
           "failed to learn from the labels, and not the labels' bias.</p>"]
    if any(p[0] == "annotators_blind" for p in pickers):
        out.append("<p>The same utility with correctness hidden (each answer scored as right with the rate at which "
                   "these samples are right) is what a reward model could reach if it learnt everything in the labels "
                   "except checking whether an answer is true. If that curve also flattens, more samples can only "
                   "find longer answers, not better ones: the reward model would need to check answers.</p>")
    if plots.ok:
        fig, (ax,) = plots.figure(1, 7.0, 3.6 + 0.2 * len(pickers))
        for key, label, color in pickers:
            ys = [_num(v) for v in sel[key]]
            if len(ys) == len(ns) and all(y is not None for y in ys):
                ax.plot(ns, ys, "o-", color=color, label=label, ms=5, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("n (samples per prompt)")
        ax.set_ylabel("expected gold of the pick")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.2))  # below the plot: the curves fill it
        out.append(plots.img(fig, "best-of-n gold against n, picked by the reward model, by the annotators "
                                  "(with and without correctness) and by gold"))
    rows = [[esc(label)] + [fmt(_num(v)) for v in sel[key]] for key, label, _ in pickers]
    steps = [st for st in sel.get("reward_model_steps") or [] if isinstance(st, dict)]  # absent from older summaries
    if steps:
        by_to = {st.get("to"): st for st in steps}
        rows.insert(1, ["the reward model: change from the previous n [95% interval]"] + [
            f"{_signed(by_to[n]['mean'])} [{_signed(by_to[n]['low'])}, {_signed(by_to[n]['high'])}]"
            if n in by_to else "" for n in ns])
    out.append(table(["picked by"] + [f"n = {n}" for n in ns], rows))
    verdict = _step_verdict(steps[-1]) if steps else ""
    if verdict:
        out.append(f"<p>{esc(verdict)}</p>")
    return "\n".join(out)


def _signed(x) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v:+.3f}"


def _step_verdict(st: dict) -> str:
    """One sentence on the last step of the reward model's best-of-n curve: a fall, a gain, or noise."""
    a, b = st.get("from"), st.get("to")
    mean, low, high = (_num(st.get(k)) for k in ("mean", "low", "high"))
    if mean is None or low is None or high is None:
        return ""
    span = f"{_signed(mean)} in gold (95% interval {_signed(low)} to {_signed(high)}, resampling prompts)"
    if high < 0:
        return (f"From best-of-{a} to best-of-{b} the reward model's pick changes by {span}: a fall larger than the "
                "noise, so at this n the reward model is over-optimised.")
    if low > 0:
        return f"From best-of-{a} to best-of-{b} the reward model's pick still gains: {span}."
    return (f"From best-of-{a} to best-of-{b} the reward model's pick changes by {span}: within the noise, so "
            "more samples no longer help.")


def section_length(summary: dict, runs: list[Run], plots: Plots) -> str:
    policies = {n: p for n, p in (summary.get("policies") or {}).items() if _num(p.get("mean_length")) is not None}
    mon = [r for r in runs if any(_num(m.get("length")) is not None for m in r.monitor)]
    if not policies and not mon:
        return ""
    out = ['<section id="length"><h2>7. Length drift</h2>',
           "<p>Longer is not better: the gold judge penalises every word beyond the ideal answer, but the "
           "annotators liked long answers and so does the reward model trained on their labels. A policy whose "
           "answers grow during RL is usually padding them to please the reward model.</p>"]
    if not plots.ok:
        out.append(plots.missing())
    else:
        n = int(bool(policies)) + int(bool(mon))
        fig, axes = plots.figure(n, 5.0, 3.2)
        i = 0
        if policies:
            ax = axes[i]
            i += 1
            names = list(policies)
            ax.barh(names, [policies[k]["mean_length"] for k in names],
                    color=[COLORS.get(method_of(k)) for k in names])
            ax.invert_yaxis()
            ax.set_xlabel("mean response length (tokens)")
            ax.set_title("final policies", fontsize=10)
        if mon:
            ax = axes[i]
            for r in mon:
                pts = [(m["step"], _num(m.get("length"))) for m in r.monitor if _num(m.get("length")) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=r.label)
            ax.set_xlabel("step")
            ax.set_ylabel("mean length (tokens)")
            ax.set_title("during training (monitor)", fontsize=10)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        out.append(plots.img(fig, "response length per policy and during training"))
    styles = {n: p.get("style_rates") for n, p in (summary.get("policies") or {}).items()
              if isinstance(p.get("style_rates"), dict)}
    if styles:
        kinds = sorted({k for s in styles.values() for k in s})
        rows = [[esc(n)] + [fmt(_num(s.get(k)), 2) for k in kinds] for n, s in styles.items()]
        out.append("<p>Share of answers showing each failure style (the world's style classifier):</p>")
        out.append(table(["policy"] + kinds, rows, "small"))
    out.append("</section>")
    return "\n".join(out)


def section_alarms(summary: dict, runs: list[Run]) -> str:
    rows = []
    seen = set()
    for r in runs:
        for a in r.alarms:
            seen.add((r.name, a.get("kind"), a.get("step")))
            rows.append([esc(r.name), esc(a.get("kind", "")), fmt(a.get("step")), esc(a.get("message", ""))])
    for a in summary.get("alarms") or []:
        if not isinstance(a, dict):
            continue
        key = (a.get("policy"), a.get("kind"), a.get("step"))
        if key not in seen and not any(k[1:] == key[1:] and str(k[0]).endswith(str(key[0])) for k in seen):
            rows.append([esc(a.get("policy", "")), esc(a.get("kind", "")), fmt(a.get("step")),
                         esc(a.get("message", ""))])
    out = ['<section id="alarms"><h2>8. Alarms</h2>',
           "<p>The over-optimisation monitor raises an alarm when <b>proxy_up_gold_down</b>: the proxy reward "
           "rises while the held-out (gold) reward falls; <b>length_drift</b>: mean answer length moves beyond "
           "a factor of its starting value; <b>disagreement_rising</b>: the reward-model ensemble disagrees more "
           "and more (the policy left the data the reward models know); <b>diversity_collapse</b>: answers "
           "become alike (mode collapse); <b>entropy_collapse</b>: the policy's token entropy on its own samples "
           "falls far below its start (it stops exploring).</p>"]
    out.append(table(["run / policy", "alarm", "step", "details"], rows) if rows
               else '<p class="ok">No alarms were raised.</p>')
    out.append("</section>")
    return "\n".join(out)


def _sample_rows(samples: list[dict], n: int) -> list[list[str]]:
    rows = []
    for s in samples[:n]:
        if not isinstance(s, dict):
            continue
        prompt = s.get("prompt", "")
        if isinstance(prompt, list):  # messages
            prompt = " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
        resp = s.get("response", s.get("completion", ""))
        if isinstance(resp, list):
            resp = " ".join(str(m.get("content", "")) for m in resp if isinstance(m, dict))
        comps = s.get("gold_components") or {}
        gold = (s.get("scores") or {}).get("gold", s.get("gold"))
        comp_s = ", ".join(f"{esc(k)} {fmt(_num(v), 2)}" for k, v in comps.items()) if isinstance(comps, dict) else ""
        rows.append([f'<div class="text">{esc(prompt)}</div>', f'<div class="text resp">{esc(resp)}</div>',
                     (f"<b>{fmt(_num(gold), 2)}</b><br>" if _num(gold) is not None else "")
                     + f'<span class="small">{comp_s}</span>'])
    return rows


def section_samples(summary: dict, runs: list[Run], n: int) -> str:
    out = ['<section id="samples"><h2>11. Sample responses</h2>',
           "<p>A few held-out prompts per policy, with the answer exactly as the model wrote it (shown as plain "
           "text) and, where there is a gold judge, its score and components: helpful (0..1), harmless (-1..0), "
           "honest (-1..0), concise (penalty for extra words).</p>"]
    found = False
    for name, p in (summary.get("policies") or {}).items():
        rows = _sample_rows(p.get("samples") or [], n)
        if rows:
            found = True
            out.append(f"<h3>{esc(name)}</h3>")
            out.append(table(["prompt", "response", "gold"], rows, "samples"))
    if not found:
        for r in runs:
            last = next((m for m in reversed(r.monitor) if m.get("samples")), None)
            if last is None:
                continue
            rows = _sample_rows(last["samples"], n)
            if rows:
                found = True
                out.append(f"<h3>{esc(r.label)} (monitor, step {fmt(last.get('step'))})</h3>")
                out.append(table(["prompt", "response", "gold"], rows, "samples"))
    if not found:
        return ""
    out.append("</section>")
    return "\n".join(out)

