"""`rlhfkit report RUN_DIR...`: one self-contained HTML file that shows whether RLHF worked.

    rlhfkit report runs/demo                      # a demo directory (summary.json + one subdirectory per run)
    rlhfkit report runs/ppo-a runs/ppo-b          # a user's own run directories (no gold judge)

The file has no scripts, no external fonts, styles or images: plots are matplotlib PNGs inlined as base64, CSS is
inline, and every string that came from a model, a dataset or a file name is HTML-escaped, so a sample response
containing `<script>` is shown as text. Sections (gold-only parts are left out for runs without a gold judge):

  1. the pipeline in six steps and what each produced     (summary.json stages / the run directories)
  2. results at a glance: gold, win rate against SFT, KL to SFT, length per policy
  3. the reward model: held-out accuracy beside the annotator ceiling, calibration, the verbosity probe
  4. training curves                                      (each run's metrics.jsonl)
  5. over-optimisation: gold and proxy reward against sqrt(KL) for each KL coefficient (Gao, Schulman & Hilton
     2022), from the monitor (monitor.jsonl)
  6. the frontier: gold reward against KL to SFT for PPO, DPO and best-of-n (Rafailov et al. 2023, Fig. 2)
  7. length drift
  8. alarms raised by the over-optimisation monitor
  9. sample responses per policy, with their gold components
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


POSITIONAL = "run_dirs"  # `rlhfkit report RUN_DIR...`


@dataclass
class Config:
    run_dirs: list[str] = field(default_factory=list)
    """Directories to report on: a demo directory (with summary.json) and/or run directories (metrics.jsonl,
    monitor.jsonl, alarms.jsonl, config.yaml); subdirectories holding those files are found too."""
    output: str = ""
    """HTML file to write (default: report.html in the first run directory)."""
    title: str = "rlhfkit report"
    """Title shown at the top of the report."""
    samples_per_policy: int = 3
    """Sample responses shown per policy."""
    max_curves: int = 4
    """Training-curve panels per run."""

    def validate(self) -> None:
        if not self.run_dirs:
            raise ValueError("run_dirs: give at least one directory")
        for d in self.run_dirs:
            if not Path(d).is_dir():
                raise ValueError(f"run_dirs: {d} is not a directory")


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class Run:
    """One training run directory."""

    name: str
    path: Path
    metrics: list[dict]
    monitor: list[dict]
    alarms: list[dict]
    config: dict

    @property
    def kl_coef(self) -> float | None:
        for key in ("kl_coef", "init_kl_coef", "kl_coefficient", "beta"):
            v = self.config.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        return None

    @property
    def label(self) -> str:
        c = self.kl_coef
        return f"{self.name} (beta {c:g})" if c is not None else self.name


def _jsonl(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _read_run(path: Path, name: str) -> Run | None:
    files = [path / f for f in ("metrics.jsonl", "monitor.jsonl", "alarms.jsonl")]
    if not any(f.exists() for f in files):
        return None
    config: dict = {}
    if (path / "config.yaml").exists():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            config = {}
    return Run(name, path, *(_jsonl(f) for f in files), config if isinstance(config, dict) else {})


def discover(dirs: list[str]) -> tuple[dict, list[Run]]:
    """(summary.json of the first demo directory or {}, every run found in the directories and two levels below)."""
    summary: dict = {}
    runs: list[Run] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not summary and (root / "summary.json").exists():
            summary = json.loads((root / "summary.json").read_text())
        candidates = [root] + sorted(p for p in root.glob("*") if p.is_dir()) + sorted(
            p for p in root.glob("*/*") if p.is_dir())
        for p in candidates:
            rp = p.resolve()
            if rp in seen or "checkpoints" in p.parts or p.name == "best":
                continue
            seen.add(rp)
            name = p.name if p != root else root.resolve().name
            if p != root and root.resolve().name not in ("", "."):
                name = str(p.relative_to(root)) if len(dirs) == 1 else f"{root.name}/{p.relative_to(root)}"
            run = _read_run(p, name)
            if run is not None:
                runs.append(run)
    return summary, runs


# ----------------------------------------------------------------------------------------------- html helpers
def esc(x: Any) -> str:
    """Inert text: every model output, prompt, file name and message goes through here."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "&ndash;" if x is None else esc(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return esc(x)
        return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
    return esc(x)


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are already-escaped HTML (use esc / fmt)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


# ----------------------------------------------------------------------------------------------- plots
class Plots:
    """matplotlib figures as inline <img> tags; plots are skipped (with a note) when matplotlib is missing."""

    def __init__(self):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            self.plt = plt
        except ImportError:
            self.plt = None

    @property
    def ok(self) -> bool:
        return self.plt is not None

    def figure(self, ncols: int = 1, width: float = 5.0, height: float = 3.4):
        fig, axes = self.plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
        return fig, list(axes[0])

    def img(self, fig, alt: str) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        self.plt.close(fig)
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'

    def missing(self) -> str:
        return '<p class="note">Plots need matplotlib: <code>pip install "rlhfkit[plot]"</code>.</p>'


def method_of(name: str) -> str:
    n = name.lower()
    for m in ("base", "sft", "ppo", "dpo", "grpo", "rloo", "bon", "best"):
        if n.startswith(m) or f"/{m}" in n or f"_{m}" in n:
            return "bon" if m == "best" else m
    return "other"


COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "ppo": "#d62728", "dpo": "#2ca02c", "bon": "#9467bd",
          "grpo": "#ff7f0e", "rloo": "#8c564b", "other": "#17becf"}


# ----------------------------------------------------------------------------------------------- sections
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
    pickers = [p for p in SELECTORS if isinstance(sel.get(p[0]), list)]  # summaries before session 14 have three
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
    steps = [st for st in sel.get("reward_model_steps") or [] if isinstance(st, dict)]  # summaries since session 15
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
    out = ['<section id="samples"><h2>9. Sample responses</h2>',
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


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 0 auto; padding: 24px; line-height: 1.45; background: #fff; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #e3e3e3; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 14px 0 4px 0; font-size: 1.02em; }
.sub { color: #666; margin-top: 0; } .note { color: #666; font-size: 0.92em; } .ok { color: #2a7a2a; }
nav { background: #f5f7fa; padding: 8px 12px; border-radius: 6px; font-size: 0.92em; }
nav a { margin-right: 12px; color: #1f5fa8; text-decoration: none; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; } table.small { font-size: 0.82em; }
table.samples td { max-width: 460px; } .text { white-space: pre-wrap; word-break: break-word; }
.resp { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.9em; }
.small { font-size: 0.85em; color: #555; }
ol.steps { padding-left: 22px; } ol.steps > li { margin-bottom: 10px; } ol.steps p { margin: 2px 0; color: #444; }
.secs { font-weight: normal; color: #888; font-size: 0.85em; margin-left: 6px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def render(summary: dict, runs: list[Run], cfg: Config) -> str:
    plots = Plots()
    has_gold = bool(summary) and any(_num(p.get("gold")) is not None for p in (summary.get("policies") or {}).values())
    has_gold = has_gold or any(_num(m.get("gold")) is not None for r in runs for m in r.monitor)
    sections = [
        ("pipeline", "Pipeline", section_pipeline(summary, runs)),
        ("glance", "Results", section_glance(summary)),
        ("rm", "Reward model", section_rm(summary, plots)),
        ("curves", "Training curves", section_curves(runs, plots, cfg.max_curves)),
        ("overopt", "Over-optimisation", section_overopt(runs, plots, has_gold)),
        ("frontier", "Frontier", section_frontier(summary, plots) if has_gold else ""),
        ("length", "Length drift", section_length(summary, runs, plots)),
        ("alarms", "Alarms", section_alarms(summary, runs)),
        ("samples", "Samples", section_samples(summary, runs, cfg.samples_per_policy)),
    ]
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, body in sections if body)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    intro = ("This report shows whether reinforcement learning from human feedback made the policy better, or only "
             "better at fooling its reward model. "
             + ("It covers the built-in world, where a gold judge knows the true quality of every answer."
                if summary else "It covers your own runs; there is no gold judge, so the gold-only parts are left out."))
    body = "\n".join(b for _, _, b in sections if b)
    dirs = ", ".join(esc(d) for d in cfg.run_dirs)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(cfg.title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(cfg.title)}</h1><p class=\"sub\">{dirs} &middot; generated {esc(when)}</p>"
            f"<p>{esc(intro)}</p><nav>{nav}</nav>\n{body}\n</body></html>\n")


def run(cfg: Config) -> Path:
    cfg.validate()
    summary, runs = discover(cfg.run_dirs)
    if not summary and not runs:
        raise ValueError(f"no summary.json, metrics.jsonl or monitor.jsonl found under {cfg.run_dirs}")
    out = Path(cfg.output) if cfg.output else Path(cfg.run_dirs[0]) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(summary, runs, cfg), encoding="utf-8")
    print(f"report: {out.resolve()}")
    return out
