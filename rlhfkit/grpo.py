"""`rlhfkit grpo` and `rlhfkit rloo`: critic-free policy gradients from G samples per prompt.

GRPO (Shao et al. 2024, DeepSeekMath): sample G responses per prompt, score them, and use the group-normalised
score A_i = (r_i - mean_g) / std_g as the advantage of every token of response i; the KL to the reference is a
LOSS term (the k3 estimator: unbiased and non-negative, PITFALLS #3), not a reward penalty. Dr. GRPO (Liu et al.
2025) drops the std scaling (scale_rewards=false) and the per-sequence length normalisation
(aggregation=seq_mean_token_sum), both of which bias the update towards easy/hard groups and long wrong answers.
RLOO (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i - mean of the OTHER G-1 scores (an unbiased baseline).

Batch semantics (as in ppo.py): rollout_batch_size prompts per iteration x num_generations completions each; the
completions of a prompt stay together on one process. completions / num_minibatches ==
micro_batch_size x gradient_accumulation_steps x world_size, checked. One optimizer step per minibatch;
num_iterations passes over each rollout. With the defaults (num_iterations 1, num_minibatches 1) every update is
on-policy: the ratio is exactly 1 and is still formed, so the gradient is the policy gradient and the clipped
objective stays correct when num_iterations > 1. In that case the old log-probs are the update's own forward,
detached (no extra forward pass); otherwise they are recomputed at rollout time at the sampling temperature.

    from rlhfkit import grpo
    grpo.train(grpo.Config(model="runs/sft", data="prompts.jsonl", reward_model=["rlhfkit.world:correct_reward"]))
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import config as config_lib
from . import models
from .advantages import grpo_advantages, rloo_advantages
from .engine import Engine, StepSampler, seed_everything, setup_distributed, total_steps
from .kl import kl_k1, kl_k3
from .logprobs import masked_mean
from .losses import aggregate, ppo_policy_loss
from .modeling import TokenLogprobs, rows_layout, use_packed
from .rollout import (OnlineConfig, as_reward_fn, build_monitor, check_batch, encode_prompts, load_prompts,
                      mean_over_ranks, micro_weight, rollout, rollout_generator)


@dataclass
class Config(OnlineConfig):
    learning_rate: float = 1e-5
    """Peak AdamW learning rate."""
    num_generations: int = 4
    """G: completions sampled per prompt (the group)."""
    rollout_batch_size: int = 2
    """Prompts per iteration over all processes; completions per iteration = rollout_batch_size x num_generations."""
    num_minibatches: int = 1
    """Minibatches per pass over a rollout; one optimizer step each."""
    num_iterations: int = 1
    """Passes over each rollout (1: a single on-policy update, ratio == 1)."""
    beta: float = 0.04
    """Weight of the k3 KL-to-reference loss term (0: no reference model is loaded at all)."""
    scale_rewards: bool = True
    """GRPO: divide group-centred scores by the group std; false = Dr. GRPO (centre only). Not used by rloo."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon (matters only when num_iterations > 1 or num_minibatches > 1)."""
    share_prompt: bool = True
    """Forward each prompt once for the completions of it in a micro-batch (the G samples of a group), in the
    update and in the reference forward: exact (modeling.rows_layout), fewer tokens. Off: padded rows."""

    def validate(self) -> None:
        self.validate_online(self.num_generations)
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (advantages are relative to the group)")
        if self.num_iterations < 1 or self.beta < 0:
            raise ValueError("num_iterations must be >= 1 and beta >= 0")
        per_iter = self.num_iterations * self.num_minibatches
        if self.save_every and self.save_every % per_iter:
            raise ValueError(f"save_every {self.save_every} must be a multiple of num_iterations x num_minibatches = "
                             f"{per_iter}, so checkpoints fall between iterations")


def train(cfg: Config, reward_fn: Callable | None = None) -> Path:
    """GRPO (group-normalised advantages). `reward_fn` (Python API) overrides cfg.reward_model."""
    return _train(cfg, "grpo", reward_fn)


def train_rloo(cfg: Config, reward_fn: Callable | None = None) -> Path:
    """RLOO (leave-one-out baselines); same config and loop as GRPO."""
    return _train(cfg, "rloo", reward_fn)


def group_advantages(scores: torch.Tensor, group_size: int, estimator: str, scale_by_std: bool) -> torch.Tensor:
    """(N,) scores, groups contiguous -> (N,) advantages, one per completion."""
    if estimator == "rloo":
        return rloo_advantages(scores, group_size)
    return grpo_advantages(scores, group_size, scale_by_std=scale_by_std)


def _train(cfg: Config, estimator: str, reward_fn: Callable | None) -> Path:
    cfg.validate()
    seed_everything(cfg.seed)
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    policy = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code)
    ref = None
    if cfg.beta > 0:  # the reference is the initial policy (copied before a resume) or ref_model; frozen
        ref = models.load_causal_lm(cfg.ref_model, tokenizer, cfg.trust_remote_code) if cfg.ref_model \
            else copy.deepcopy(policy)
        ref.requires_grad_(False).eval().to(dist.device)
    prompts = load_prompts(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid)
    counter: dict = {}
    encoded = encode_prompts(tokenizer, prompts, cfg.max_prompt_length, counter)
    G = cfg.num_generations
    mb = check_batch(cfg.rollout_batch_size * G, cfg.num_minibatches, cfg.micro_batch_size,
                     cfg.gradient_accumulation_steps, dist.world_size)
    if cfg.rollout_batch_size % dist.world_size:
        raise ValueError(f"rollout_batch_size {cfg.rollout_batch_size} prompts do not split over "
                         f"{dist.world_size} processes (a prompt's group stays on one process)")
    per_iter = cfg.num_iterations * cfg.num_minibatches
    on_policy = per_iter == 1
    sampler = StepSampler(len(prompts), cfg.rollout_batch_size, cfg.seed)
    n_steps = total_steps(cfg, sampler.steps_per_epoch * per_iter)
    engine = Engine(cfg, TokenLogprobs(policy), n_steps, name=estimator, dist_info=dist)
    packed = use_packed(policy, dist.device)  # the GPU layout for the update's forwards (modeling.use_packed)
    dev = engine.dist.device
    reward = as_reward_fn(reward_fn, cfg.reward_model, cfg.reward_weights or None, dev, cfg.reward_batch_size)
    monitor = build_monitor(cfg, tokenizer, out, reward, ref, dist.is_main)
    if dist.is_main:
        config_lib.save(cfg, out / "config.yaml")
        if counter:
            print(f"{estimator}: truncation counts {counter}")
    n_local = cfg.rollout_batch_size // dist.world_size
    c_local, mb_local = n_local * G, mb // dist.world_size
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    buf: dict = {}
    t0 = time.perf_counter()
    for step in engine.remaining_steps():
        it, k = divmod(step, per_iter)
        if buf.get("it") != it:
            # 1. rollout: G completions of each of this process's prompts, contiguous per prompt (prompt-major)
            idx = [i for i in sampler.indices(it)[dist.rank * n_local:(dist.rank + 1) * n_local] for _ in range(G)]
            ro = rollout(policy, [encoded[i] for i in idx], [prompts[i] for i in idx], reward,
                         eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, decode=decode,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                         top_p=cfg.top_p, generator=rollout_generator(cfg.seed, it, dist.rank, dev),
                         forward_batch_size=cfg.micro_batch_size, ref_policy=ref, recompute_logprobs=not on_policy,
                         share_prompt=cfg.share_prompt, autocast=engine.autocast)
            engine.count(gen_tokens=int(ro.lengths.sum()), gen_s=ro.gen_s)
            # 2. group-relative advantages (GRPO / Dr. GRPO / RLOO), one per completion
            adv = group_advantages(ro.scores, G, estimator, cfg.scale_rewards)
            group_std = ro.scores.view(-1, G).std(dim=1)
            roll_metrics = mean_over_ranks({
                "rollout/score": ro.scores.mean().item(),
                "rollout/score_std": group_std.mean().item(),  # within-group spread: the learning signal
                "rollout/frac_zero_std": (group_std == 0).float().mean().item(),  # groups with no signal
                "rollout/length": ro.lengths.float().mean().item(),
                "rollout/eos_fraction": ro.has_eos.float().mean().item(),
                "kl/beta": cfg.beta,
                **{f"rollout/{k}": v.float().mean().item() for k, v in ro.reward_parts.items() if v.dim() <= 1}})
            buf = {"it": it, "ro": ro, "adv": adv}
        ro, adv = buf["ro"], buf["adv"]
        metrics = dict(roll_metrics)
        if monitor is not None and monitor.due(step):
            metrics.update(monitor.run(step, policy))
            monitor.save_best(policy, tokenizer)
        # 3. one optimizer step on minibatch j of pass `epoch` over the rollout
        epoch, j = divmod(k, cfg.num_minibatches)
        perm = (torch.arange(c_local) if on_policy else
                torch.randperm(c_local, generator=torch.Generator().manual_seed(cfg.seed * 7919 + it * 131 + epoch)))
        rows = perm[j * mb_local:(j + 1) * mb_local].to(dev)
        mb_tokens = mean_over_ranks({"t": float(ro.mask[rows].sum())})["t"] * dist.world_size
        stats = {k: 0.0 for k in ("train/loss", "policy/loss", "policy/clipfrac", "policy/approx_kl", "policy/ratio",
                                  "policy/entropy", "kl/token", "kl/seq")}
        for micro in rows.split(cfg.micro_batch_size):
            b = ro.rows(micro)
            lay = (rows_layout(b["input_ids"], b["response_mask"], tokenizer.pad_token_id, packed)
                   if cfg.share_prompt else None)
            with engine.autocast():
                fwd = engine.model(b["input_ids"], b["attention"], b["response_mask"], cfg.temperature,
                                   with_entropy=True, layout=lay)
            lp, mask = fwd["logprobs"], b["mask"]
            old = lp.detach() if on_policy else b["logprobs"]
            pl, ps = ppo_policy_loss(lp, old, adv[micro], mask, cfg.clip_range, cfg.aggregation)
            loss = pl
            if ref is not None:
                # KL as a loss term with the k3 estimator (GRPO eq. 4; PITFALLS #3), aggregated like the policy loss
                kl_loss = aggregate(kl_k3(lp, b["ref_logprobs"]), mask, cfg.aggregation)
                loss = loss + cfg.beta * kl_loss
                stats["kl/token"] += micro_weight(mask, "token_mean", mb_tokens, mb) * float(
                    masked_mean(kl_k3(lp.detach(), b["ref_logprobs"]), mask))
                stats["kl/seq"] += len(micro) / mb * float(
                    torch.where(mask, kl_k1(lp.detach(), b["ref_logprobs"]), 0.0).sum(-1).mean())
            w = micro_weight(mask, cfg.aggregation, mb_tokens, mb)
            engine.backward(w * loss)
            engine.count(samples=len(micro), tokens=int(b["attention"].sum()))
            for key, v in (("train/loss", loss), ("policy/loss", pl), ("policy/clipfrac", ps["clipfrac"]),
                           ("policy/approx_kl", ps["approx_kl"]), ("policy/ratio", ps["ratio"]),
                           ("policy/entropy", masked_mean(fwd["entropy"], mask))):
                stats[key] += w * float(v.detach())
        if ref is None:
            del stats["kl/token"], stats["kl/seq"]
        metrics.update({key: v * dist.world_size for key, v in mean_over_ranks(stats).items()})
        metrics["train/elapsed_s"] = time.perf_counter() - t0
        engine.step(metrics, batch_info=f"iteration {it} pass {epoch} minibatch {j}")
        # every process stops together (the monitor runs on the main process only)
        if mean_over_ranks({"stop": float(monitor is not None and monitor.should_stop)})["stop"] > 0:
            print(f"{estimator}: early stop at step {engine.step_count} (no held-out improvement)")
            break
    engine.close()
    if dist.is_main:
        models.save(policy, tokenizer, out, metadata={"stage": estimator, "steps": engine.step_count,
                                                      "truncation": counter, "skipped_steps": engine.skipped_steps})
    return out


def bench_batch_overrides(batch: int) -> dict:
    """`rlhfkit bench grpo|rloo --batch N` (BENCHMARKS.md, TRL semantics): N completions per optimizer step =
    N/4 prompts x 4 generations, 32 new tokens at temperature 1, one on-policy update per rollout."""
    if batch % 4:
        raise ValueError(f"--batch {batch}: grpo/rloo benchmarks use 4 generations per prompt; use a multiple of 4")
    return {"rollout_batch_size": batch // 4, "num_generations": 4, "num_minibatches": 1, "num_iterations": 1,
            "micro_batch_size": batch, "gradient_accumulation_steps": 1, "max_new_tokens": 32, "temperature": 1.0}
