"""The over-optimisation monitor on a tiny model: records, alarms, best checkpoint, early stop."""

from __future__ import annotations

import json
import pytest
import torch

from conftest import write_jsonl
from rlhfkit.diagnostics.monitor import Monitor, MonitorConfig


def length_reward(prompts, responses):
    """A python reward that likes long answers, as an ensemble: score and std."""
    s = torch.tensor([float(len(r.split())) for r in responses])
    return {"score": s, "std": 0.1 * s}


def const_gold(prompts, responses):
    return [1.0 for _ in responses]


@pytest.fixture(scope="module")
def tiny(toy_dir):
    from rlhfkit import models

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    model = models.load_causal_lm(str(toy_dir / "model"), tok)
    return tok, model


def _cfg(toy_dir, tmp_path, **kw):
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()][:6]
    p = write_jsonl(tmp_path / "probe.jsonl", [{"prompt": r["prompt"], "category": "sum"} for r in rows])
    base = dict(prompts=str(p), every=2, n=4, max_new_tokens=8, seed=0, gold="test_monitor:const_gold",
                early_stop=True)
    base.update(kw)
    return MonitorConfig(**base)


def test_off_when_not_configured(toy_dir, tmp_path, tiny):
    tok, _ = tiny
    assert Monitor.from_config(MonitorConfig(), tok, tmp_path) is None
    assert Monitor.from_config(_cfg(toy_dir, tmp_path, every=0), tok, tmp_path) is None
    assert Monitor.from_config(_cfg(toy_dir, tmp_path, prompts=""), tok, tmp_path) is None


def test_run_writes_monitor_jsonl(toy_dir, tmp_path, tiny):
    tok, model = tiny
    run_dir = tmp_path / "run"
    mon = Monitor.from_config(_cfg(toy_dir, tmp_path), tok, run_dir, proxy=length_reward, ref_model=model)
    assert mon is not None and mon.max_new_tokens == 8 and len(mon.prompts) == 4
    assert mon.due(0) and not mon.due(1) and mon.due(4)
    out = mon.run(0, model)
    assert set(out) == {"monitor/proxy", "monitor/gold", "monitor/kl", "monitor/length", "monitor/distinct_2",
                        "monitor/disagreement"}
    # the policy is its own reference: the Monte-Carlo KL is exactly 0
    assert out["monitor/kl"] == 0.0
    assert out["monitor/gold"] == 1.0
    assert 0 < out["monitor/length"] <= 8
    recs = [json.loads(x) for x in (run_dir / "monitor.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["step"] == 0 and recs[0]["n"] == 4
    # same seed, same policy: the same numbers at the next evaluation (common random numbers)
    out2 = mon.run(2, model)
    assert out2 == out
    # the best step is the first one (ties do not move it); save_best writes only on a new best
    assert mon.best_step == 0
    assert mon.save_best(model, tok) is None
    mon.run(4, model)
    mon.run(6, model)
    assert mon.should_stop  # 3 evaluations without improvement, early_stop on


def test_save_best_and_alarms(toy_dir, tmp_path, tiny):
    tok, model = tiny
    run_dir = tmp_path / "run2"
    mon = Monitor.from_config(_cfg(toy_dir, tmp_path, gold=""), tok, run_dir, proxy=length_reward)
    mon.run(0, model)
    assert mon.best_step == 0 and mon.save_best(model, tok) == run_dir / "best"
    assert (run_dir / "best" / "model.safetensors").exists()
    meta = json.loads((run_dir / "best" / "rlhfkit.json").read_text())
    assert meta["step"] == 0 and meta["score_key"] == "proxy"
    # feed a synthetic history: proxy up, gold up then down, length doubling -> two alarms, once each
    mon.records = []
    for i, (p, g, L) in enumerate([(0, 0, 10), (1, 1, 10), (2, 2, 10), (3, 3, 12), (4, 2, 20), (5, 1, 30),
                                   (6, 0, 40), (7, -1, 50)]):
        mon._track({"step": i, "proxy": p, "gold": g, "length": L, "distinct_2": 0.8})
        mon._check_alarms()
    kinds = [a["kind"] for a in mon.alarms]
    assert sorted(kinds) == ["length_drift", "proxy_up_gold_down"]
    logged = [json.loads(x) for x in (run_dir / "alarms.jsonl").read_text().splitlines()]
    assert [a["kind"] for a in logged] == kinds


def test_entropy_is_recorded_and_its_collapse_alarms(toy_dir, tmp_path, tiny):
    """The trainer's entropy, a typed argument of run(), is recorded and returned; entropies falling to a quarter of
    the start raise entropy_collapse once (start 2, ratio 0.3: trailing means of 3 are 1.667, 1.167, then (1, 0.5, 0.5) = 0.667 >= 0.6 is
    silent and (0.5, 0.5, 0.5) = 0.5 < 0.6 fires at the 7th evaluation, step 12)."""
    tok, model = tiny
    run_dir = tmp_path / "run_entropy"
    mon = Monitor(["2+2?"], tok, run_dir, every=2, entropy_ratio=0.3)
    assert "monitor/entropy" not in mon.run(0, model) and "entropy" not in mon.records[0]  # none passed
    mon.records = []
    for i, h in enumerate([2.0, 2.0, 2.0, 1.0, 0.5, 0.5, 0.5]):
        mon._track({"step": 2 * i, "entropy": h, "length": 5.0, "distinct_2": 0.8})
        mon._check_alarms()
    assert [(a["kind"], a["step"]) for a in mon.alarms] == [("entropy_collapse", 12)]
    out = mon.run(14, model, entropy=0.5)
    assert out["monitor/entropy"] == 0.5 and mon.records[-1]["entropy"] == 0.5
    assert [a["kind"] for a in mon.alarms].count("entropy_collapse") == 1  # raised once per kind
    with pytest.raises(ValueError, match="entropy_ratio"):
        Monitor(["x"], tok, run_dir, every=1, entropy_ratio=1.5)


def test_inside_ppo(toy_dir, tmp_path):
    """The monitor wired into a real trainer: monitor/* metrics logged, monitor.jsonl written, best/ kept."""
    ppo = pytest.importorskip("rlhfkit.algorithms.ppo")
    from rlhfkit.engine import read_metrics

    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    cfg = ppo.Config(model=str(toy_dir / "model"), data=str(prompts), output_dir=str(tmp_path / "run"), max_steps=4,
                     rollout_batch_size=4, num_minibatches=1, micro_batch_size=4, ppo_epochs=1, max_new_tokens=6,
                     progress=False, threads=1, monitor_prompts=str(prompts), monitor_every=2, monitor_n=4,
                     monitor_gold="test_monitor:const_gold")
    ppo.train(cfg, reward_fn=lambda p, r: [float(len(x)) for x in r])
    recs = [json.loads(x) for x in (tmp_path / "run" / "monitor.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["step"] % 2 == 0 for r in recs) and all(r["gold"] == 1.0 for r in recs)
    assert "kl" in recs[0] and "proxy" in recs[0]  # the trainer's reward and reference model were passed in
    logged = [m for m in read_metrics(tmp_path / "run") if "monitor/proxy" in m]
    assert len(logged) == 2 and logged[0]["monitor/gold"] == 1.0
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_resume_keeps_history(toy_dir, tmp_path, tiny):
    tok, model = tiny
    run_dir = tmp_path / "run3"
    mon = Monitor.from_config(_cfg(toy_dir, tmp_path), tok, run_dir, proxy=length_reward)
    mon.run(0, model)
    mon.run(2, model)
    again = Monitor.from_config(_cfg(toy_dir, tmp_path, resume=True), tok, run_dir, proxy=length_reward)
    assert [r["step"] for r in again.records] == [0, 2] and again.best_step == 0
    again.run(2, model)  # a resumed run re-evaluates step 2: it replaces the old record
    assert [r["step"] for r in again.records] == [0, 2]
    assert [json.loads(x)["step"] for x in (run_dir / "monitor.jsonl").read_text().splitlines()] == [0, 2]
    fresh = Monitor.from_config(_cfg(toy_dir, tmp_path), tok, run_dir, proxy=length_reward)
    assert fresh.records == [] and not (run_dir / "monitor.jsonl").exists()


@pytest.mark.parametrize("patience", [1, 3])
def test_monitor_patience_sets_when_early_stop_fires(toy_dir, tmp_path, patience):
    """A constant gold judge never improves on its first evaluation (ties do not move the best step), so with the
    monitor every step and early_stop, training stops after step `patience`: patience + 1 optimizer steps run.
    monitor_patience is a real config field: it reaches the monitor from Python, YAML and the command line."""
    from rlhfkit import config as config_lib
    from rlhfkit.algorithms import grpo
    from rlhfkit.engine import read_metrics

    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    base = dict(model=str(toy_dir / "model"), data=str(prompts), output_dir=str(tmp_path / "run"), max_steps=8,
                rollout_batch_size=2, num_generations=2, micro_batch_size=4, max_new_tokens=4, progress=False,
                threads=1, monitor_prompts=str(prompts), monitor_every=1, monitor_n=2, monitor_max_new_tokens=4,
                monitor_gold="test_monitor:const_gold", early_stop=True)
    cfg = config_lib.resolve(grpo.Config, None, {**base, "monitor_patience": str(patience)})  # as the CLI does
    assert cfg.monitor_patience == patience and cfg.monitor_config().patience == patience
    grpo.train(cfg, reward_fn=const_gold)
    assert len(read_metrics(tmp_path / "run")) == patience + 1
