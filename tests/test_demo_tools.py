"""demo_tools' pure pieces: the RL curve read from a run's metrics.jsonl (the stage itself runs in test_demo)."""
import json

from rlhfkit import demo_tools


def test_rl_curve_averages_the_first_and_last_tenth_of_steps(tmp_path):
    """20 steps -> windows of 2. Malformed rates 0.5, 0.3 then ... 0.1, 0.0: first window mean 0.4, last 0.05;
    scores 0.1, 0.2 ... 0.7, 0.8 -> 0.15 and 0.75; rows without tool metrics (e.g. an eval row) are skipped."""
    rows = []
    for i in range(1, 21):
        malformed = {1: 0.5, 2: 0.3, 19: 0.1, 20: 0.0}.get(i, 0.2)
        score = {1: 0.1, 2: 0.2, 19: 0.7, 20: 0.8}.get(i, 0.5)
        rows.append({"step": i, "tools/malformed_call_rate": malformed, "rollout/score": score,
                     "tools/calls_per_episode": 1.0})
        if i == 10:
            rows.append({"step": 10, "eval/loss": 1.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = demo_tools.rl_curve(tmp_path)
    assert c["steps"] == 20 and c["window"] == 2
    assert c["first"]["steps"] == [1, 2] and c["last"]["steps"] == [19, 20]
    assert abs(c["first"]["malformed_call_rate"] - 0.4) < 1e-12 and abs(c["last"]["malformed_call_rate"] - 0.05) < 1e-12
    assert abs(c["first"]["score"] - 0.15) < 1e-12 and abs(c["last"]["score"] - 0.75) < 1e-12
    assert c["first"]["calls_per_episode"] == 1.0


def test_rl_curve_of_a_short_or_missing_run(tmp_path):
    """Under 10 steps each window is one step; no metrics file gives an empty curve."""
    assert demo_tools.rl_curve(tmp_path) == {}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "tools/malformed_call_rate": 0.25,
                                                        "rollout/score": 0.5}) + "\n")
    c = demo_tools.rl_curve(tmp_path)
    assert c["first"] == c["last"] and c["first"]["malformed_call_rate"] == 0.25 and c["window"] == 1
