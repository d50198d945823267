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


def test_score_counts_success_overall_and_per_kind():
    """Three multiplications and one look-up, answered right, wrong, right (the last number counts) and right:
    success 3/4 (Wilson 95%: centre (0.75 + z^2/8) / (1 + z^2/4) = 0.6275, half-width 0.3269 -> [0.3006, 0.9544]),
    multiply 2/3, lookup 1/1; malformed 1 of 5 attempted calls; the transcript is the first episode's."""
    from rlhfkit.rollout.multiturn import Episode
    from rlhfkit.world.tool_tasks import ToolWorld

    world = ToolWorld(seed=0)
    place = sorted(world.table)[0]
    tasks = [{"prompt": [{"role": "user", "content": q}], "kind": k, "answer": a} for q, k, a in (
        ("What is 12 times 11?", "multiply", "132"), ("What is 20 times 30?", "multiply", "600"),
        ("Compute 13 times 3.", "multiply", "39"), (f"What is the code of {place}?", "lookup", world.table[place]))]
    answers = ["The answer is 132.", "The answer is 601.", "Not 40 but 39.", f"The answer is {world.table[place]}."]
    episodes = [Episode(segments=[], messages=[{"role": "assistant", "content": x}], calls=1, malformed=int(i == 1),
                        answer=x, stop="answer") for i, x in enumerate(answers)]
    r = demo_tools.score(world, tasks, episodes)
    assert r["success"]["mean"] == 0.75 and r["success"]["n"] == 4
    assert abs(r["success"]["low"] - 0.300642) < 1e-6 and abs(r["success"]["high"] - 0.954413) < 1e-6
    assert r["success_by_kind"] == {"lookup": 1.0, "multiply": 2 / 3}
    assert r["malformed_call_rate"] == 0.2 and r["calls_per_episode"] == 1.0  # 1 malformed of 5 attempted
    assert r["transcript"]["success"] is True and r["transcript"]["answer_expected"] == "132"
