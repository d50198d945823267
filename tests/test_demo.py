"""The demo end to end at toy scale: every stage runs through the real commands, summary.json has the contract's
keys, a re-run reuses finished stages, and the same seed gives the same numbers."""

import json
import shutil

import pytest

from rlhfkit import demo


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.run(demo.Config(out=str(out), scale="toy", threads=1, tool_use=True))  # every optional stage
    return out


def test_summary_has_the_contract_keys(toy_demo):
    s = json.loads((toy_demo / "summary.json").read_text())
    assert s["seed"] == 0 and s["config"]["scale"] == "toy"
    assert "torch" in s["versions"] and s["versions"]["cpu_capability"]  # results differ across CPU kinds
    for p in ("base", "sft"):
        pol = s["policies"][p]
        assert isinstance(pol["gold"], float)
        assert set(pol["gold_components"]) >= {"helpful", "harmless", "honest", "concise"}
        assert pol["mean_length"] > 0
        assert set(pol["win_rate_vs_sft"]) == {"mean", "low", "high"}
        assert pol["kl_to_sft"] is not None and pol["style_rates"]
    assert abs(s["policies"]["sft"]["kl_to_sft"]) < 1e-6  # SFT against itself
    wb, ws = s["policies"]["sft"]["win_rate_vs_base"], s["policies"]["base"]["win_rate_vs_sft"]
    assert abs(wb["mean"] + ws["mean"] - 1) < 1e-9 and abs(wb["low"] + ws["high"] - 1) < 1e-9
    for k in ("accuracy", "ceiling", "ece", "length_correlation"):
        assert s["rm"][k] is not None
    assert all(st["seconds"] >= 0 for st in s["stages"].values()) and "sft" in s["stages"]
    sel = s["bon_selectors"]  # best-of-n picked by the reward model, the annotators' utility and gold
    assert sel["n"] == [1] + s["config"]["bon_n"] and len(sel["kl"]) == len(sel["n"])
    for k in ("reward_model", "annotators_blind", "annotators", "gold"):
        assert len(sel[k]) == len(sel["n"]) and sel[k][0] == pytest.approx(sel["gold"][0])  # n = 1: the sample mean
    assert sel["gold"][-1] >= max(sel["reward_model"][-1], sel["annotators"][-1], sel["annotators_blind"][-1])
    steps = sel["reward_model_steps"]  # each step of the reward model's curve, with its bootstrap interval
    assert [(st["from"], st["to"]) for st in steps] == list(zip(sel["n"], sel["n"][1:]))
    for st, lo, hi in zip(steps, sel["reward_model"], sel["reward_model"][1:]):
        assert st["mean"] == pytest.approx(hi - lo, abs=1e-9) and st["low"] <= st["mean"] <= st["high"]
    assert (toy_demo / "report.html").exists()


def test_ai_feedback_keys(toy_demo):
    """The AI-feedback stage: the rule-based judge relabelled the annotators' own pairs (no new samples), its
    agreement numbers are proportions over those pairs, and both DPO policies were judged with gold."""
    s = json.loads((toy_demo / "summary.json").read_text())
    ai = s["ai_feedback"]
    n = ai["pairs"]
    assert n["annotated"] == s["labels"]["n"] and n["train"] + n["judge_ties"] == n["annotated"] and n["train"] > 0
    assert max(n["judge_vs_gold"], n["judge_vs_annotators"]) <= n["train"]
    for k in ("judge_gold_accuracy", "judge_annotator_accuracy", "annotator_gold_accuracy", "position_consistency"):
        assert 0.0 <= ai[k] <= 1.0, k
    assert -1.0 <= ai["judge_annotator_kappa"] <= 1.0
    assert ai["position_consistency"] == 1.0 and ai["first_shown_wins"] == 0.5  # the rule judge is symmetric
    for role, name in (("rlaif", "dpo_ai"), ("human", "dpo")):
        p = ai["policies"][role]
        assert p["policy"] == name and p["gold"] == s["policies"][name]["gold"]
        w = p["win_rate_vs_sft"]
        assert set(w) == {"mean", "low", "high"} and 0 <= w["low"] <= w["mean"] <= w["high"] <= 1
    assert 0.0 <= ai["rm"]["accuracy"] <= 1.0 and ai["rm"]["ceiling"] == s["rm"]["ceiling"]  # same held-out labels
    ai_rows = [json.loads(x) for x in (toy_demo / "ai_feedback" / "labels.jsonl").read_text().splitlines()]
    human = [json.loads(x) for x in (toy_demo / "prefs" / "train.jsonl").read_text().splitlines()]
    assert [sorted((str(r["chosen"]), str(r["rejected"]))) for r in ai_rows] == \
        [sorted((str(r["chosen"]), str(r["rejected"]))) for r in human]  # the same pairs, in order
    assert 'id="ai"' in (toy_demo / "report.html").read_text()


def test_ai_feedback_off_leaves_every_other_result_unchanged(toy_demo, tmp_path, capsys):
    """--no-ai-feedback on a finished run reuses every stage up to dpo, drops the stage and its keys, and every
    other result in summary.json is what the run with the stage gave: the stage changes no other stage's inputs."""
    run = tmp_path / "run"
    shutil.copytree(toy_demo, run)
    capsys.readouterr()
    demo.run(demo.Config(out=str(run), scale="toy", threads=1, ai_feedback=False, tool_use=True))
    printed = capsys.readouterr().out
    reused = {line.split()[2].rstrip(":") for line in printed.splitlines() if line.endswith("earlier)")}
    every = {st.name for st in demo.stages(demo.Config(scale="toy", tool_use=True))}
    assert reused == every - {"ai_feedback", "eval", "bon", "report"}
    on, off = (json.loads((d / "summary.json").read_text()) for d in (toy_demo, run))
    assert "ai_feedback" not in off and "dpo_ai" not in off["policies"] and "ai_feedback" not in off["stages"]
    for d in (on["policies"], on["frontier"]):
        del d["dpo_ai"]
    for k in ("config", "stages", "ai_feedback"):
        on.pop(k), off.pop(k, None)
    assert on == off


def test_tool_use_keys_and_report(toy_demo):
    """The tool-use stage: three policies on the same held-out tool tasks, success with its interval and the
    malformed-call rate each, the RL run's first and last malformed-call rate, and an escaped transcript per policy
    in the report."""
    s = json.loads((toy_demo / "summary.json").read_text())
    tu = s["tool_use"]
    assert set(tu["policies"]) == {"no_tool", "tool_sft", "tool_rl"}
    for p in tu["policies"].values():
        w = p["success"]
        assert 0 <= w["low"] <= w["mean"] <= w["high"] <= 1 and w["n"] == tu["n_heldout"]
        assert 0 <= p["malformed_call_rate"] <= 1 and p["transcript"]["messages"][0]["role"] == "user"
    assert tu["policies"]["no_tool"]["calls_per_episode"] == 0  # no tools offered, none called
    assert tu["rl"]["steps"] >= 1 and 0 <= tu["rl"]["first"]["malformed_call_rate"] <= 1
    assert (toy_demo / "tool_rl" / "config.json").exists() and (toy_demo / "tool_sft" / "config.json").exists()
    html = (toy_demo / "report.html").read_text()
    assert 'id="tools"' in html and "tool_rl" in html
    assert tu["demo_skip"] == 0.3 and tu["n_demos"] == 32  # TOOL_SCALES["toy"]: what tool-SFT imitated
    assert "Tool-SFT imitates 32 demonstrations, 30% of which answer with a guess" in html


def test_tool_use_off_leaves_every_other_result_unchanged(toy_demo, tmp_path, capsys):
    """--no-tool-use on a finished run reuses every other stage but the report, and drops only `tool_use`."""
    run = tmp_path / "run"
    shutil.copytree(toy_demo, run)
    capsys.readouterr()
    demo.run(demo.Config(out=str(run), scale="toy", threads=1, tool_use=False))
    printed = capsys.readouterr().out
    reused = {line.split()[2].rstrip(":") for line in printed.splitlines() if line.endswith("earlier)")}
    assert reused == {st.name for st in demo.stages(demo.Config(scale="toy", tool_use=True))} - {"tool_use", "report"}
    on, off = (json.loads((d / "summary.json").read_text()) for d in (toy_demo, run))
    assert "tool_use" not in off and 'id="tools"' not in (run / "report.html").read_text()
    for k in ("config", "stages", "tool_use"):
        on.pop(k), off.pop(k, None)
    assert on == off


def test_rerun_reuses_finished_stages(toy_demo, capsys):
    before = (toy_demo / "stages" / "sft.json").read_text()
    demo.run(demo.Config(out=str(toy_demo), scale="toy", threads=1, tool_use=True))
    assert (toy_demo / "stages" / "sft.json").read_text() == before
    assert "reused" in capsys.readouterr().out


def test_same_seed_same_numbers(toy_demo, tmp_path):
    demo.run(demo.Config(out=str(tmp_path / "again"), scale="toy", threads=1, stop_after="eval_sft"))
    a = json.loads((toy_demo / "stages" / "eval_sft.json").read_text())["result"]
    b = json.loads((tmp_path / "again" / "stages" / "eval_sft.json").read_text())["result"]
    assert a == b


def test_force_redoes_stages(toy_demo):
    record = toy_demo / "stages" / "world.json"
    before = record.stat().st_mtime_ns
    demo.run(demo.Config(out=str(toy_demo), scale="toy", threads=1, force=True, stop_after="world"))
    assert record.stat().st_mtime_ns != before  # redone, not reused


def _changed(**kw) -> set[str]:
    """The stages whose fingerprint differs from the toy defaults' when the config gets `kw`."""
    a, b = demo.fingerprints(demo.Config(scale="toy")), demo.fingerprints(demo.Config(scale="toy", **kw))
    return {name for name in set(a) | set(b) if a.get(name) != b.get(name)}


def test_fingerprints_follow_what_each_stage_reads(monkeypatch):
    """A finished stage is reused only under the settings it depends on (its own, and those of every stage it
    reads); out / force / stop_after change nothing; a release that changes a SCALES value, or another torch,
    redoes everything."""
    every = {st.name for st in demo.stages(demo.Config(scale="toy"))}
    assert _changed(out="elsewhere", force=True, stop_after="sft") == set()
    assert _changed(seed=1) == every and _changed(threads=1) == every
    assert _changed(bon_n=[2, 4]) == {"bon", "report"}
    later = {"prefs", "rm", "ppo_beta_0.01", "ppo_beta_0.1", "ppo_beta_0.5", "dpo", "ai_feedback", "eval", "bon",
             "report"}
    assert _changed(annotator_verbosity=1.0) == later
    assert _changed(ai_feedback=False) == {"ai_feedback", "eval", "bon", "report"}  # the stage, and its readers
    assert _changed(tool_use=True) == {"tool_use", "report"}  # off by default
    # a new KL coefficient (not the smallest): its own PPO stage, and what reads every PPO run
    assert _changed(ppo_betas=[0.01, 0.1, 0.5, 0.05]) == {"ppo_beta_0.05", "eval", "bon", "report"}
    # a new smallest coefficient: the old smallest now runs the shorter budget, so it is redone too
    assert _changed(ppo_betas=[0.001, 0.01, 0.1, 0.5]) == {"ppo_beta_0.001", "ppo_beta_0.01", "eval", "bon",
                                                            "report"}
    before = demo.fingerprints(demo.Config(scale="toy"))
    monkeypatch.setitem(demo.SCALES, "toy", {**demo.SCALES["toy"], "rm_lr": 1.0})
    after = demo.fingerprints(demo.Config(scale="toy"))
    assert all(after[n] != before[n] for n in every)
    real = demo.versions()  # another torch (or rlhfkit, or CPU kind) rounds differently: nothing is reused
    monkeypatch.setattr(demo, "versions", lambda: {**real, "torch": "0.0.0"})
    assert all(demo.fingerprints(demo.Config(scale="toy"))[n] != after[n] for n in every)


def test_other_bon_n_reruns_only_best_of_n_and_the_report(toy_demo, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(toy_demo, run)
    capsys.readouterr()
    demo.run(demo.Config(out=str(run), scale="toy", threads=1, bon_n=[2, 3]))
    printed = capsys.readouterr().out
    reused = {line.split()[2].rstrip(":") for line in printed.splitlines() if line.endswith("earlier)")}
    assert reused == {st.name for st in demo.stages(demo.Config(scale="toy"))} - {"bon", "report"}
    s = json.loads((run / "summary.json").read_text())
    assert s["bon_selectors"]["n"] == [1, 2, 3] and {"bon_2", "bon_3"} <= set(s["policies"])
    assert "bon_4" not in s["policies"]


def test_stage_list_and_stop_after_follow_ai_feedback():
    """The stage sits after dpo and before eval; off, it is gone from the pipeline and from --stop-after's choices."""
    on = [st.name for st in demo.stages(demo.Config(scale="toy"))]
    assert on.index("dpo") < on.index("ai_feedback") < on.index("eval")
    assert "ai_feedback" not in [st.name for st in demo.stages(demo.Config(scale="toy", ai_feedback=False))]
    demo.Config(scale="toy", stop_after="ai_feedback").validate()
    with pytest.raises(ValueError, match="stop_after"):
        demo.Config(scale="toy", ai_feedback=False, stop_after="ai_feedback").validate()

