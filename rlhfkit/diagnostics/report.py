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
  9. AI feedback: the demo's RLAIF stage, its judge against gold and the annotators, and the gold of the policy
     trained on its labels beside the human-label one                   (summary.json ai_feedback; report_ai.py)
 10. rounds of `rlhfkit loop`: the reward models' accuracy before and after retraining and the policy's gold by round
     (a loop directory's summary.json `rounds`; report_loop.py)
 11. tool use: task success of a no-tool, a tool-SFT and a tool-RL policy on held-out tool tasks, the malformed-call
     rate during RL, one transcript per policy                 (summary.json tool_use; report_tools.py)
 12. sample responses per policy, with their gold components
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Helpers and sections live in report_html.py and report_sections.py; their names stay importable from here
from rlhfkit.diagnostics.report_html import (  # noqa: F401
    COLORS, CSS, Plots, _num, esc, fmt, method_of, table,
)
from rlhfkit.diagnostics.report_sections import (  # noqa: F401
    CURVE_GROUPS, PREFERRED, SELECTORS, STEPS, bon_selectors_part, pick_curves, section_alarms, section_curves,
    section_frontier, section_glance, section_length, section_overopt, section_pipeline, section_rm, section_samples,
)
from rlhfkit.diagnostics.report_ai import section_ai_feedback
from rlhfkit.diagnostics.report_loop import section_rounds
from rlhfkit.diagnostics.report_tools import section_tool_use


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
        ("ai", "AI feedback", section_ai_feedback(summary)),
        ("rounds", "Rounds", section_rounds(summary, plots)),
        ("tools", "Tool use", section_tool_use(summary)),
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
