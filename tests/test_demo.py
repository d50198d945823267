"""The demo end to end at toy scale: every stage runs through the real commands, summary.json has the contract's
keys, a re-run reuses finished stages, and the same seed gives the same numbers."""

import json

import pytest

from rlhfkit import demo


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.run(demo.Config(out=str(out), scale="toy", threads=1))
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
    assert (toy_demo / "report.html").exists()


def test_rerun_reuses_finished_stages(toy_demo, capsys):
    before = (toy_demo / "stages" / "sft.json").read_text()
    demo.run(demo.Config(out=str(toy_demo), scale="toy", threads=1))
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


def test_fingerprint_covers_config_and_scale_budget(monkeypatch):
    """A finished stage is reused only under the same settings: the config (not out/force/stop_after) and the
    scale's budget, so a release that changes a SCALES value never reuses stages trained under the old one."""
    cfg = demo.Config(scale="toy")
    fp = demo._fingerprint(cfg)
    assert demo._fingerprint(demo.Config(scale="toy", out="elsewhere", force=True, stop_after="sft")) == fp
    assert demo._fingerprint(demo.Config(scale="toy", annotator_verbosity=1.0)) != fp
    monkeypatch.setitem(demo.SCALES, "toy", {**demo.SCALES["toy"], "rm_lr": 1.0})
    assert demo._fingerprint(cfg) != fp
