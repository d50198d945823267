"""PPO: learns a toy reward, exact step-0 identities, every parameter trains, resume equality, KL controller wiring."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.math import kl as kl_lib
from rlhfkit.algorithms import ppo
from rlhfkit.engine import read_metrics


def digit_reward(prompts, responses):
    """Dense toy reward: fraction of response characters that are digits."""
    return [sum(c.isdigit() for c in r) / max(1, len(r)) for r in responses]


@pytest.fixture(scope="module")
def prompts_file(toy_dir):
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()]
    return write_jsonl(toy_dir / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])


def cfg_for(toy_dir, prompts_file, out, **kw):
    base = dict(model=str(toy_dir / "model"), data=str(prompts_file), output_dir=str(out), max_steps=4,
                rollout_batch_size=8, num_minibatches=2, micro_batch_size=2, gradient_accumulation_steps=2,
                ppo_epochs=2, max_new_tokens=6, learning_rate=1e-2, kl_coef=0.05, progress=False,
                lr_scheduler="constant", threads=1)
    base.update(kw)
    return ppo.Config(**base)


def test_ppo_improves_toy_reward(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=40, rollout_batch_size=16, micro_batch_size=8,
                  gradient_accumulation_steps=1, max_new_tokens=8, kl_coef=0.01, missing_eos_penalty=0.0)
    ppo.train(cfg, reward_fn=digit_reward)
    scores = [m["rollout/score"] for m in read_metrics(tmp_path / "run")][::2]  # one per iteration
    assert len(scores) == 20
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.1, scores


def test_step0_ratio_is_one_and_kl_is_zero(toy_dir, prompts_file, tmp_path):
    """Before any update the recomputed log-probs equal the rollout's bit for bit (same temperature, same chunk
    shapes, dropout off) and the reference is the initial policy, so ratio == 1, approx KL == 0, KL == 0 exactly;
    and with no KL and no no-EOS penalty, the KL-penalised return equals the score."""
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=2, ppo_epochs=1, temperature=0.7,
                  missing_eos_penalty=0.0)
    ppo.train(cfg, reward_fn=digit_reward)
    first, second = read_metrics(tmp_path / "run")[:2]
    assert first["policy/ratio"] == 1.0 and first["policy/approx_kl"] == 0.0 and first["policy/clipfrac"] == 0.0
    assert first["kl/seq"] == 0.0 and first["rollout/reward_total"] == first["rollout/score"]
    assert first["value/clipfrac"] == 0.0
    assert second["policy/ratio"] != 1.0  # the second minibatch sees the updated policy: the ratio is live


def test_smoke_every_param_changes_and_resume_is_exact(toy_dir, prompts_file, tmp_path):
    from safetensors.torch import load_file

    full = cfg_for(toy_dir, prompts_file, tmp_path / "full", max_steps=8, save_every=4, adaptive_kl=True,
                   target_kl=0.01, kl_horizon=100.0)
    ppo.train(full, reward_fn=digit_reward)
    m_full = read_metrics(tmp_path / "full")
    assert len(m_full) == 8 and all(torch.isfinite(torch.tensor(m["train/loss"])) for m in m_full)
    # every trainable tensor of policy and critic moved (the checkpoint holds both)
    init = load_file(str(toy_dir / "model" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "full" / "checkpoints" / "step-00000004" / "model.safetensors"))
    for name, t in init.items():
        key = "policy." + ("lm_head.weight" if name == "model.embed_tokens.weight" else name)  # tied: saved once
        assert not torch.equal(ckpt[key], t), f"policy {name} did not change"
    value_keys = [k for k in ckpt if k.startswith("value.")]
    assert "value.head.weight" in value_keys
    for k in value_keys:
        base = init.get(k.replace("value.body.", "model."))
        assert base is None or not torch.equal(ckpt[k], base), f"{k} did not change"
    assert ckpt["value.head.weight"].abs().sum() > 0  # zero-initialised head has learnt
    # final model reloads with plain transformers
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "full"))
    # resume from step 4: same losses, same beta trajectory (controller state is in the checkpoint)
    part = cfg_for(toy_dir, prompts_file, tmp_path / "part", max_steps=4, save_every=4, adaptive_kl=True,
                   target_kl=0.01, kl_horizon=100.0)
    part.max_steps = 8
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000004", tmp_path / "part" / "checkpoints" / "step-00000004")
    part.resume = True
    ppo.train(part, reward_fn=digit_reward)
    m_part = read_metrics(tmp_path / "part")
    assert [m["step"] for m in m_part] == [5, 6, 7, 8]
    for a, b in zip(m_full[4:], m_part):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)
        assert a["kl/beta"] == b["kl/beta"]


def test_adaptive_kl_controller_wiring(toy_dir, prompts_file, tmp_path):
    """beta moves by Ziegler's rule from the logged sequence KL: beta' = beta (1 + clip(KL/target - 1, +-0.2) n/H)."""
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=6, ppo_epochs=1, adaptive_kl=True,
                  kl_coef=0.1, target_kl=0.5, kl_horizon=40.0)
    ppo.train(cfg, reward_fn=digit_reward)
    its = read_metrics(tmp_path / "run")[::2]
    assert its[0]["kl/beta"] == 0.1
    for a, b in zip(its, its[1:]):
        ctl = kl_lib.AdaptiveKLController(a["kl/beta"], 0.5, 40.0)
        assert b["kl/beta"] == pytest.approx(ctl.update(a["kl/seq"], 8), rel=1e-9)
    assert its[1]["kl/beta"] != its[0]["kl/beta"]


def test_shared_critic_runs(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=2, ppo_epochs=1, critic="shared")
    ppo.train(cfg, reward_fn=digit_reward)
    assert len(read_metrics(tmp_path / "run")) == 2


def test_entropy_bonus_enters_the_loss(toy_dir, prompts_file, tmp_path):
    """entropy_coef: train/loss = policy/loss + vf_coef x value/loss - entropy_coef x policy/entropy, each term
    aggregated over the same tokens with the same micro-batch weights; the entropy is logged and positive."""
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=2, ppo_epochs=1, entropy_coef=0.05)
    ppo.train(cfg, reward_fn=digit_reward)
    for m in read_metrics(tmp_path / "run"):
        expected = m["policy/loss"] + cfg.vf_coef * m["value/loss"] - 0.05 * m["policy/entropy"]
        assert m["policy/entropy"] > 0 and m["train/loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_batch_semantics_are_checked(toy_dir, prompts_file, tmp_path):
    with pytest.raises(ValueError, match="micro_batch_size 2 x gradient_accumulation_steps 1"):
        cfg_for(toy_dir, prompts_file, tmp_path, gradient_accumulation_steps=1).validate()
    with pytest.raises(ValueError, match="save_every 3 must be a multiple"):
        cfg_for(toy_dir, prompts_file, tmp_path, save_every=3).validate()
    cfg_for(toy_dir, prompts_file, tmp_path).validate()


def test_monitor_wiring(toy_dir, prompts_file, tmp_path):
    """--monitor-prompts/--monitor-every: monitor/* metrics in metrics.jsonl and run_dir/monitor.jsonl."""
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=4, ppo_epochs=1, monitor_prompts=str(prompts_file),
                  monitor_every=2, monitor_n=4, monitor_max_new_tokens=4)
    ppo.train(cfg, reward_fn=digit_reward)
    ms = read_metrics(tmp_path / "run")
    assert any(k.startswith("monitor/") for k in ms[0]) and any(k.startswith("monitor/") for k in ms[2])
    assert not any(k.startswith("monitor/") for k in ms[1])
    assert len((tmp_path / "run" / "monitor.jsonl").read_text().splitlines()) == 2


def test_train_validates_its_config_from_python(toy_dir, prompts_file, tmp_path):
    """A Config built in Python (no resolve) is validated by train() itself, before any model loads."""
    with pytest.raises(ValueError, match="critic"):
        ppo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", critic="both"), reward_fn=digit_reward)
    with pytest.raises(ValueError, match="monitor_patience must be >= 1"):
        ppo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", monitor_patience=0), reward_fn=digit_reward)
    assert not (tmp_path / "run" / "config.yaml").exists()
