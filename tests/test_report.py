"""`rlhfkit report`: sections, escaping, no network, plain user runs, and a real headless browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from rlhfkit.diagnostics import report as R

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(path: Path, kl_coef: float, peak: int, gold: bool, steps: int = 12) -> None:
    """A synthetic PPO run: proxy rises steadily; gold rises until `peak` then falls; length grows after it."""
    (path / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(f"kl_coef: {kl_coef}\nseed: 0\n")
    _jsonl(path / "metrics.jsonl", [{"step": s, "train/loss": 1.0 / (s + 1), "rollout/score": 0.1 * s,
                                     "kl/sequence": 0.3 * s / (1 + 10 * kl_coef), "train/lr": 1e-4}
                                    for s in range(1, steps + 1)])
    mon = []
    for s in range(0, steps + 1, 2):
        kl = 0.4 * s / (1 + 10 * kl_coef)
        rec = {"step": s, "proxy": 0.2 * s, "kl": kl, "length": 8 + max(0, s - peak) * 2, "distinct_2": 0.6,
               "samples": [{"prompt": "What is 2 plus 3?", "response": f"2 plus 3 is 5. {PAYLOAD}"}]}
        if gold:
            rec["gold"] = 0.5 + 0.05 * min(s, peak) - 0.08 * max(0, s - peak)
        mon.append(rec)
    _jsonl(path / "monitor.jsonl", mon)
    if gold and peak < steps:
        _jsonl(path / "alarms.jsonl", [{"kind": "proxy_up_gold_down", "step": peak + 4,
                                        "message": f"proxy rose while gold fell {PAYLOAD}"}])


def make_demo_dir(root: Path) -> Path:
    """A fake demo directory: summary.json with every key the demo writes, plus PPO/DPO run directories."""
    comps = {"helpful": 0.8, "harmless": 0.0, "honest": -0.1, "concise": -0.2}
    names = {"base": (-0.9, None, 0.0, 14), "sft": (0.40, None, 0.0, 9), "ppo_small": (0.30, 0.45, 9.0, 25),
             "ppo_moderate": (0.62, 0.68, 2.5, 10), "ppo_large": (0.48, 0.57, 0.6, 9), "dpo": (0.55, 0.63, 1.8, 9),
             "bon_4": (0.52, 0.6, math.log(4) - 3 / 4, 10), "bon_16": (0.60, 0.66, math.log(16) - 15 / 16, 11)}
    policies, frontier = {}, {}
    for name, (g, wr, kl, L) in names.items():
        samples = [{"prompt": "What is 2 plus 3?", "response": "2 plus 3 is 5.", "kind": "arith",
                    "scores": {"gold": 1.0}, "gold_components": comps},
                   {"prompt": f"Tell me {PAYLOAD}", "response": f"Great question! {PAYLOAD}", "kind": "harmful",
                    "scores": {"gold": -0.4}, "gold_components": comps}]
        policies[name] = {"gold": g, "gold_components": comps, "mean_length": L, "proxy": g + 0.1,
                          "style_rates": {"padded": 0.1, "wrong": 0.05}, "kl_to_sft": kl, "samples": samples}
        if wr is not None:
            policies[name]["win_rate_vs_sft"] = {"mean": wr, "low": wr - 0.06, "high": wr + 0.06}
        if name != "base":
            frontier[name] = {"kl_to_sft": kl, "gold": g, "proxy": g + 0.1}
    summary = {"policies": policies, "frontier": frontier,
               "rm": {"accuracy": 0.71, "ceiling": 0.76, "ece": 0.03, "length_correlation": 0.42},
               "bon_selectors": {"n": [1, 4, 16], "kl": [0.0, math.log(4) - 3 / 4, math.log(16) - 15 / 16],
                                 "reward_model": [0.40, 0.52, 0.471], "annotators_blind": [0.40, 0.50, 0.512],
                                 "annotators": [0.40, 0.61, 0.74],
                                 "gold": [0.40, 0.83, 0.97]},
               "ai_feedback": ai_feedback(0.58, 0.63),
               "alarms": [{"policy": "ppo_small", "kind": "proxy_up_gold_down", "step": 8},
                          {"policy": "ppo_small", "kind": "length_drift", "step": 10}],
               "stages": {"tokenizer": {"seconds": 3}, "pretrain": {"seconds": 60}, "sft": {"seconds": 30},
                          "label": {"seconds": 10}, "rm": {"seconds": 20}, "ppo_small": {"seconds": 40},
                          "dpo": {"seconds": 15}, "bon": {"seconds": 12}, "eval": {"seconds": 25}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary))
    _run(root / "ppo_small", 0.01, 4, True)
    _run(root / "ppo_moderate", 0.05, 10, True)
    _run(root / "ppo_large", 0.2, 12, True)
    _jsonl(root / "dpo" / "metrics.jsonl", [{"step": s, "train/loss": 0.69 - 0.02 * s, "rewards/margin": 0.1 * s,
                                             "rewards/accuracy": 0.5 + 0.02 * s} for s in range(1, 11)])
    return root


def ai_feedback(rlaif: float, human: float, half: float = 0.06) -> dict:
    """summary.json's `ai_feedback` (the demo's RLAIF stage) with win rates `rlaif` / `human` against SFT, each
    +- `half`, and model text carrying the payload."""
    def policy(name, wr):
        return {"policy": name, "gold": wr - 0.7, "gold_se": 0.02,
                "win_rate_vs_sft": {"mean": wr, "low": wr - half, "high": wr + half}}

    return {"judge": "rule", "judge_gold_accuracy": 0.99, "judge_gold_kappa": 0.98, "judge_annotator_accuracy": 0.64,
            "judge_annotator_kappa": 0.28, "annotator_gold_accuracy": 0.66, "annotator_gold_kappa": 0.31,
            "position_consistency": 1.0, "first_shown_wins": 0.5,
            "pairs": {"annotated": 900, "judge_ties": 200, "train": 700, "judge_vs_gold": 650,
                      "judge_vs_annotators": 700, "annotators_vs_gold": 850},
            "prefers_longer": {"judge": 0.41, "annotators": 0.68, "gold": 0.40},
            "rm": {"accuracy": 0.612, "ceiling": 0.76},
            "policies": {"rlaif": policy(f"dpo_ai{PAYLOAD}", rlaif), "human": policy("dpo", human)},
            "disagreements": [{"prompt": f"What is 2 plus 3? {PAYLOAD}", "judge_prefers": "5.",
                               "annotators_prefer": f"Great question! 2 plus 3 is 5. {PAYLOAD}",
                               "gold_sides_with": "judge"}]}


def make_user_runs(root: Path) -> list[Path]:
    a, b = root / "my-ppo-a", root / "my-ppo-b"
    _run(a, 0.02, 6, gold=False)
    _run(b, 0.1, 12, gold=False)
    _jsonl(a / "alarms.jsonl", [{"kind": "length_drift", "step": 10, "message": "mean response length rose"}])
    return [a, b]


def _check_inert(html: str) -> None:
    assert "<script" not in html.lower()  # no scripts at all: the payload is shown as text
    assert "<img src=x" not in html  # no live tag...
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html  # ...it is escaped text
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert url.startswith(("data:image/png;base64,", "#")), url  # nothing from the network
    assert "http://" not in html and "https://" not in html


def test_demo_report_has_every_section(tmp_path):
    d = make_demo_dir(tmp_path / "demo")
    out = R.run(R.Config(run_dirs=[str(d)]))
    assert out == d / "report.html"
    html = out.read_text()
    for sid in ("pipeline", "glance", "rm", "curves", "overopt", "frontier", "length", "alarms", "ai", "samples"):
        assert f'<section id="{sid}">' in html, sid
    _check_inert(html)
    assert html.count("<img ") >= 9  # rm, 4 curves, over-optimisation, frontier, best-of-n pickers, length
    assert "Who picks the best of n?" in html and "0.471" in html and "0.740" in html  # the pickers' table
    assert "0.512" in html and "cannot check answers" in html  # with the correctness-blind picker
    assert "0.710" in html and "0.760" in html  # reward-model accuracy beside its ceiling
    assert "ppo_small (beta 0.01)" in html  # curves are labelled with their KL coefficient
    assert "0.62 [0.56, 0.68]" in html or "0.68 [0.62, 0.74]" in html  # a win rate with its interval
    assert "proxy_up_gold_down" in html and "length_drift" in html
    assert "<img src=x" not in html  # the payload's tag never becomes markup


def test_user_runs_report_without_gold(tmp_path):
    dirs = make_user_runs(tmp_path)
    out = R.run(R.Config(run_dirs=[str(d) for d in dirs], output=str(tmp_path / "r" / "user.html")))
    html = out.read_text()
    for sid in ("pipeline", "curves", "overopt", "length", "alarms", "samples"):
        assert f'<section id="{sid}">' in html, sid
    for sid in ("glance", "rm", "frontier", "ai"):  # gold-only / demo-only parts are left out
        assert f'<section id="{sid}">' not in html, sid
    assert "gold-only parts are left out" in html
    _check_inert(html)


def test_report_cli(tmp_path):
    from rlhfkit.cli.main import main

    d = make_demo_dir(tmp_path / "demo")
    main(["report", "--run-dirs", str(d), "--output", str(tmp_path / "cli.html")])
    assert (tmp_path / "cli.html").exists()
    main(["report", str(d), "--output", str(tmp_path / "positional.html")])  # rlhfkit report RUN_DIR...
    # equal apart from the "generated YYYY-MM-DD HH:MM" stamp, which differs when the two renders straddle a minute
    def unstamped(name):
        return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d", "generated -", (tmp_path / name).read_text())

    assert unstamped("positional.html") == unstamped("cli.html")
    with pytest.raises(ValueError):
        R.run(R.Config(run_dirs=[str(tmp_path / "missing")]))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("kind", ["demo", "user"])
def test_report_in_headless_chromium(tmp_path, kind):
    """Render in a real browser: a screenshot is produced and the console shows no errors."""
    if kind == "demo":
        out = R.run(R.Config(run_dirs=[str(make_demo_dir(tmp_path / "demo"))]))
    else:
        out = R.run(R.Config(run_dirs=[str(d) for d in make_user_runs(tmp_path)],
                             output=str(tmp_path / "user.html")))
    art = ROOT / "test-artifacts"
    art.mkdir(exist_ok=True)
    shot = art / f"report-{kind}.png"
    if shot.exists():
        shot.unlink()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--hide-scrollbars", f"--screenshot={shot}",
             "--window-size=1200,3000", out.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert shot.exists() and shot.stat().st_size > 10_000, log[-2000:]
    assert "Uncaught" not in log and "ERROR:CONSOLE" not in log and ":CONSOLE(" not in log, log[-2000:]
    shutil.copy(out, art / f"report-{kind}.html")


def test_bon_pickers_of_an_older_summary():
    """Summaries written before the correctness-blind picker have three pickers: three rows, no empty one."""
    sel = {"n": [1, 4], "kl": [0.0, math.log(4) - 3 / 4], "reward_model": [0.4, 0.45],
           "annotators": [0.4, 0.6], "gold": [0.4, 0.8]}
    html = R.bon_selectors_part(sel, R.Plots())
    assert "picked 3 ways" in html and "cannot check answers" not in html
    assert html.count("<tr>") == 4  # header + three pickers


@pytest.mark.parametrize("frontier", [
    {"sft": {"kl_to_sft": 0.0, "gold": -0.2, "proxy": 0.0}},  # nothing but the reference: a zero-width KL range
    {"sft": {"kl_to_sft": 0.0, "gold": -0.2, "proxy": 0.0},  # a Monte-Carlo KL estimate a little below zero
     "dpo": {"kl_to_sft": -0.01, "gold": -0.1, "proxy": 0.1}},
])
def test_frontier_plot_on_its_square_root_axis_takes_edge_cases(frontier):
    """The frontier's KL axis is spaced by sqrt(KL); a run with only KL 0, or a slightly negative estimate, still
    draws (no warning, no NaN axis)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = R.section_frontier({"frontier": frontier}, R.Plots())
    assert "<img" in html and all(f"<td>{name}</td>" in html for name in frontier)


@pytest.mark.parametrize("step, verdict", [
    ({"mean": -0.045, "low": -0.064, "high": -0.026}, "a fall larger than the noise"),
    ({"mean": 0.029, "low": 0.013, "high": 0.046}, "still gains"),
    ({"mean": -0.009, "low": -0.025, "high": 0.007}, "within the noise"),
])
def test_bon_steps_row_and_verdict(step, verdict):
    """With `reward_model_steps` (when the summary has them) the table gains a row of changes with their
    intervals, and one sentence says whether the last step is a fall, a gain or noise."""
    sel = {"n": [1, 8, 16], "kl": [0.0, 1.204, 1.835], "reward_model": [-0.2, -0.06, -0.06 + step["mean"]],
           "annotators": [-0.2, 0.3, 0.5], "gold": [-0.2, 0.4, 0.6],
           "reward_model_steps": [{"from": 1, "to": 8, "mean": 0.14, "low": 0.12, "high": 0.16},
                                  {"from": 8, "to": 16, **step}]}
    html = R.bon_selectors_part(sel, R.Plots())
    assert html.count("<tr>") == 5  # header + three pickers + the change row
    assert "+0.140 [+0.120, +0.160]" in html
    assert f"{step['mean']:+.3f} [{step['low']:+.3f}, {step['high']:+.3f}]" in html
    assert "From best-of-8 to best-of-16" in html and verdict in html


@pytest.mark.parametrize("rlaif, human, verdict", [
    (0.70, 0.55, "AI labels beat the human ones"),
    (0.45, 0.62, "AI labels trail the human ones"),
    (0.58, 0.63, "indistinguishable at this sample size"),  # [0.52, 0.64] overlaps [0.57, 0.69]
])
def test_ai_feedback_section(rlaif, human, verdict):
    """The AI-feedback section: agreement with Wilson intervals, both policies' gold and win rates, and a verdict
    read off the win-rate intervals (overlap = indistinguishable); model text stays escaped text."""
    html = R.section_ai_feedback({"ai_feedback": ai_feedback(rlaif, human), "rm": {"accuracy": 0.71}})
    assert verdict in html and sum(v in html for v in ("beat the", "trail the", "indistinguishable")) == 1
    assert f"{rlaif:.3f} [{rlaif - 0.06:.3f}, {rlaif + 0.06:.3f}]" in html
    assert f"{human - 0.7:.3f} &plusmn; 0.020" in html  # gold with its standard error
    # 0.99 of 650 pairs: Wilson [0.979, 0.995]; the annotators' 0.66 of 850: [0.627, 0.691]; so "closer to gold"
    assert "0.990 [0.979, 0.995]" in html and "0.660 [0.627, 0.691]" in html
    assert "closer to gold than the annotators" in html and "close to an oracle" in html
    assert "0.612" in html and "0.710" in html  # the two reward models on the annotators' held-out labels
    _check_inert(html)
    assert R.section_ai_feedback({"policies": {}}) == ""  # a demo run without the stage: no section


def test_ai_feedback_section_without_the_eval():
    """Stopped after the stage (no gold for the policies yet): the agreement shows, no verdict is made up."""
    ai = ai_feedback(0.6, 0.6)
    ai["policies"] = {k: {"policy": p["policy"], "gold": None, "gold_se": None, "win_rate_vs_sft": None}
                      for k, p in ai["policies"].items()}
    html = R.section_ai_feedback({"ai_feedback": ai})
    assert "AI judge vs gold" in html and "labels beat" not in html and "indistinguishable" not in html


def test_ai_feedback_interval_helpers():
    """Worked by hand. interval_order compares whole intervals: (0.6, 0.7) lies above (0.4, 0.5); touching or
    crossing is an overlap. accuracy_interval(0.5, 100) is the 95% Wilson interval of 50/100: centre
    (0.5 + z^2/200) / (1 + z^2/100) = 0.5, half-width 1.96 * sqrt(0.0025 + 3.8416/40000) / 1.038416 = 0.09617,
    so (0.40383, 0.59617); without a count there is no interval."""
    from rlhfkit.diagnostics import report_ai
    assert report_ai.interval_order((0.6, 0.7), (0.4, 0.5)) == "above"
    assert report_ai.interval_order((0.4, 0.5), (0.6, 0.7)) == "below"
    assert report_ai.interval_order((0.4, 0.6), (0.6, 0.7)) == "overlap"
    lo, hi = report_ai.accuracy_interval(0.5, 100)
    assert lo == pytest.approx(0.40383, abs=2e-4) and hi == pytest.approx(0.59617, abs=2e-4)
    assert report_ai.accuracy_interval(0.5, 0) is None and report_ai.accuracy_interval(None, 100) is None
