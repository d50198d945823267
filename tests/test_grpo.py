"""GRPO / RLOO: a verifiable reward improves, on-policy ratio is exactly 1, every parameter trains, resume equality."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import write_jsonl
from rlhfkit import grpo
from rlhfkit.engine import read_metrics


def has_number(prompts, responses):
    """Verifiable 0/1 reward on the toy arithmetic task: the response states a number."""
    return [float(any(c.isdigit() for c in r)) for r in responses]


@pytest.fixture(scope="module")
def prompts_file(toy_dir):
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()]
    return write_jsonl(toy_dir / "grpo_prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])


def cfg_for(toy_dir, prompts_file, out, **kw):
    base = dict(model=str(toy_dir / "model"), data=str(prompts_file), output_dir=str(out), max_steps=2,
                rollout_batch_size=2, num_generations=4, micro_batch_size=4, gradient_accumulation_steps=2,
                max_new_tokens=6, learning_rate=1e-2, beta=0.0, progress=False, lr_scheduler="constant", threads=1)
    base.update(kw)
    return grpo.Config(**base)


def test_grpo_improves_verifiable_reward(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=20, rollout_batch_size=4,
                  micro_batch_size=16, gradient_accumulation_steps=1, max_new_tokens=8)
    grpo.train(cfg, reward_fn=has_number)
    scores = [m["rollout/score"] for m in read_metrics(tmp_path / "run")]
    assert sum(scores[-4:]) / 4 > sum(scores[:4]) / 4 + 0.15, scores


def test_on_policy_ratio_is_exactly_one_and_kl_starts_at_zero(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=3, beta=0.1, temperature=0.8)
    grpo.train(cfg, reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    assert all(m["policy/ratio"] == 1.0 and m["policy/clipfrac"] == 0.0 for m in ms)
    assert ms[0]["kl/seq"] == 0.0 and ms[0]["kl/token"] == 0.0  # reference == initial policy
    assert ms[-1]["kl/token"] > 0


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_smoke_every_param_changes_and_resume_is_exact(toy_dir, prompts_file, tmp_path, trainer):
    """Off-policy path too: num_iterations 2 recomputes old log-probs at rollout time; beta > 0 loads a reference."""
    from safetensors.torch import load_file

    entry = grpo.train if trainer == "grpo" else grpo.train_rloo
    kw = dict(num_iterations=2, beta=0.05, save_every=2)
    entry(cfg_for(toy_dir, prompts_file, tmp_path / "full", max_steps=4, **kw), reward_fn=has_number)
    m_full = read_metrics(tmp_path / "full")
    assert len(m_full) == 4 and all(torch.isfinite(torch.tensor(m["train/loss"])) for m in m_full)
    assert m_full[1]["policy/ratio"] != 1.0  # the second pass over the rollout is off-policy
    init = load_file(str(toy_dir / "model" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "full" / "checkpoints" / "step-00000002" / "model.safetensors"))
    for name, t in init.items():
        key = "model." + ("lm_head.weight" if name == "model.embed_tokens.weight" else name)  # tied: saved once
        assert not torch.equal(ckpt[key], t), f"{name} did not change"
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", part / "checkpoints" / "step-00000002")
    entry(cfg_for(toy_dir, prompts_file, part, max_steps=4, resume=True, **kw), reward_fn=has_number)
    m_part = read_metrics(part)
    assert [m["step"] for m in m_part] == [3, 4]
    for a, b in zip(m_full[2:], m_part):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)
        assert a["rollout/score"] == b["rollout/score"]


def test_dr_grpo_variant_runs(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", scale_rewards=False, aggregation="seq_mean_token_sum")
    grpo.train(cfg, reward_fn=has_number)
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in read_metrics(tmp_path / "run"))


def test_bench_batch_semantics(toy_dir, prompts_file, tmp_path):
    o = grpo.bench_batch_overrides(8)
    assert o["rollout_batch_size"] * o["num_generations"] == 8 and o["micro_batch_size"] == 8
    cfg_for(toy_dir, prompts_file, tmp_path, **o).validate()
    with pytest.raises(ValueError, match="multiple of 4"):
        grpo.bench_batch_overrides(6)
    with pytest.raises(ValueError, match="rollout_batch_size"):
        cfg_for(toy_dir, prompts_file, tmp_path, gradient_accumulation_steps=1).validate()
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        cfg_for(toy_dir, prompts_file, tmp_path, num_generations=1, micro_batch_size=1).validate()


def test_shared_prompt_forward_equals_padded_rows(toy_dir, prompts_file, tmp_path):
    """share_prompt forwards each prompt once for its G completions (modeling.rows_layout) in the update and the
    reference forward: the same training as padded rows, up to float reassociation."""
    kw = dict(max_steps=3, beta=0.1, num_iterations=2)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "shared", **kw), reward_fn=has_number)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "padded", share_prompt=False, **kw), reward_fn=has_number)
    a, b = read_metrics(tmp_path / "shared"), read_metrics(tmp_path / "padded")
    for key in ("train/loss", "policy/entropy", "kl/token", "rollout/score"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], rel=1e-4, abs=1e-6), key
