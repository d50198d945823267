"""`rlhfkit grpo` and `rlhfkit rloo`: critic-free policy gradients from G samples per prompt.

GRPO (Shao et al. 2024, DeepSeekMath): sample G responses per prompt, score them, and use the group-normalised
score A_i = (r_i - mean_g) / std_g as the advantage of every token of response i; the KL to the reference is a
LOSS term (the k3 estimator: unbiased and non-negative, PITFALLS #3), not a reward penalty. Dr. GRPO (Liu et al.
2025) drops the std scaling (scale_rewards=false) and the per-sequence length normalisation
(aggregation=seq_mean_token_sum), both of which bias the update towards easy/hard groups and long wrong answers.
RLOO (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i - mean of the OTHER G-1 scores (an unbiased baseline).
REINFORCE++ (Hu 2025; `rlhfkit reinforce-pp`, `ReinforcePPConfig` below): the same loop with the KL in the
per-token reward and the return normalised over the whole batch.

The controls of the 2025 online-RL papers are flags on the same loop (docs/ppo.md has the equations):
DAPO (Yu et al. 2025): epsilon_high > epsilon_low (clip-higher), aggregation token_mean, dynamic_sampling,
overlong_buffer (soft overlong punishment), mask_truncated_completions (overlong filtering);
GSPO (Zheng et al. 2025): importance_sampling_level=sequence; CISPO (MiniMax 2025): policy_loss=cispo, which is
also the truncated-importance-weight correction for rollouts reused over num_iterations > 1; entropy_coef.

Batch semantics (as in ppo.py): rollout_batch_size prompts per iteration x num_generations completions each; the
completions of a prompt stay together on one process. completions / num_minibatches ==
micro_batch_size x gradient_accumulation_steps x world_size, checked. One optimizer step per minibatch;
num_iterations passes over each rollout. With the defaults (num_iterations 1, num_minibatches 1) every update is
on-policy: the ratio is exactly 1 and is still formed, so the gradient is the policy gradient and the clipped
objective stays correct when num_iterations > 1. In that case the old log-probs are the update's own forward,
detached (no extra forward pass); otherwise they are recomputed at rollout time at the sampling temperature.

Tool use (`--tools calculator --max-turns 4`, every trainer here and PPO): each completion is a multi-turn episode
(rollout.multiturn: generate, run the calls, append the results, continue, within max_turns and
max_episode_tokens); only the policy's own tokens are in the loss, the ratio and the KL (the tool results are
context), the group is G episodes of a prompt, and the reward sees the final answer and the trajectory
(rollout.episodes.tool_rollout; rlhfkit.rollout.score:tool_reward scores a row's `answer` column and the calls).

    from rlhfkit import grpo, reinforce_pp
    grpo.train(grpo.Config(model="runs/sft", data="prompts.jsonl", reward_model=["rlhfkit.world:correct_reward"]))
    grpo.train(grpo.Config(model="runs/sft-tools", data="tool_prompts.jsonl", tools=["calculator"], max_turns=3,
                           reward_model=["rlhfkit.rollout.score:tool_reward"]))
    reinforce_pp.train(reinforce_pp.Config(model="runs/sft", data="prompts.jsonl",
                                           reward_model=["rlhfkit.world:correct_reward"]))
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, ClassVar

import torch

from rlhfkit.math.advantages import (
    grpo_advantages, informative_groups, overlong_penalty, reinforce_pp_advantages, rloo_advantages,
)
from rlhfkit.engine import Engine, StepSampler, total_steps
from rlhfkit.math.kl import kl_k1, kl_k3
from rlhfkit.math.logprobs import masked_mean
from rlhfkit.math.masks import compact, expand
from rlhfkit.math.losses import IMPORTANCE_SAMPLING_LEVELS, aggregate, cispo_policy_loss, entropy_bonus, ppo_policy_loss
from rlhfkit.models.layout import rows_layout, use_packed
from rlhfkit.models.logps import TokenLogprobs
from rlhfkit.algorithms import online
from rlhfkit.algorithms.online import OnlineConfig, check_batch, mean_over_ranks, micro_weight
from rlhfkit.rollout.episodes import Rollout, concat_rollouts, rollout_generator


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
    kl_coef: float = 0.04
    """Weight of the k3 KL-to-reference loss term (0: no reference model is loaded at all); `beta` is its
    deprecated name."""
    scale_rewards: bool = True
    """GRPO: divide group-centred scores by the group std; false = Dr. GRPO (centre only). Not used by rloo."""
    DEPRECATED: ClassVar[dict[str, str]] = {"clip_range": "epsilon_low", "beta": "kl_coef"}  # config.renamed
    epsilon_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - epsilon_low (PPO's epsilon; matters only when num_iterations > 1 or
    num_minibatches > 1)."""
    epsilon_high: float | None = None
    """Upper clip 1 + epsilon_high (default: epsilon_low). Larger than epsilon_low is DAPO's clip-higher (Yu et al.
    2025, sec. 3.1: 0.28 with epsilon_low 0.2); with policy_loss=cispo, the truncation of the importance weight."""
    importance_sampling_level: str = "token"
    """token: one ratio per token (GRPO, DAPO); sequence: GSPO's length-normalised sequence ratio, clipped per
    sequence (Zheng et al. 2025, eq. 5; the paper clips at 3e-4 / 4e-4 and averages per sequence: seq_mean)."""
    policy_loss: str = "clip"
    """clip: the PPO clipped surrogate; cispo: policy gradient weighted by the stop-gradient importance ratio
    truncated at 1 + epsilon_high (MiniMax-M1's CISPO, sec. 3.1): no token loses its gradient, and with
    num_iterations > 1 it is the truncated-importance-weight correction against the rollout-time log-probs."""
    entropy_coef: float = 0.0
    """Entropy bonus: subtract entropy_coef x the policy's token entropy (aggregated like the loss); 0: off."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (sec. 3.2): drop groups whose rewards are all equal (zero advantage) and sample
    more prompts to refill the batch, up to max_sampling_rounds extra rounds; logged as rollout/extra_generations."""
    max_sampling_rounds: int = 3
    """Extra rollouts dynamic_sampling may draw per iteration; if the batch is still short, zero-signal groups
    fill it (counted in rollout/frac_zero_std)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment (sec. 3.4, eq. 13): the last overlong_buffer tokens before max_new_tokens
    are a window where the reward falls linearly to -overlong_penalty_factor; 0: off."""
    overlong_penalty_factor: float = 1.0
    """The penalty at max_new_tokens when overlong_buffer > 0."""
    mask_truncated_completions: bool = False
    """DAPO's overlong filtering (sec. 3.4): completions cut at max_new_tokens (no EOS) are left out of the loss
    (they still count in their group's advantages)."""
    share_prompt: bool = True
    """Forward each prompt once for the completions of it in a micro-batch (the G samples of a group), in the
    update and in the reference forward: exact (layout.rows_layout), fewer tokens. Off: padded rows. Not used
    with tools (an episode's policy tokens are not one completion after the prompt): padded rows."""

    def min_generations(self) -> int:
        """The smallest group the advantage estimator accepts."""
        return 2

    def validate(self) -> None:
        self.validate_online(self.num_generations)
        if self.num_generations < self.min_generations():
            raise ValueError(f"num_generations must be >= {self.min_generations()} (advantages are relative to "
                             f"the group)")
        high = self.epsilon_low if self.epsilon_high is None else self.epsilon_high
        if not 0 <= self.epsilon_low < 1 or high < 0:
            raise ValueError(f"epsilon_low must be in [0, 1) and epsilon_high >= 0, got {self.epsilon_low}, {high}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"importance_sampling_level: {self.importance_sampling_level!r} is not one of "
                             f"{list(IMPORTANCE_SAMPLING_LEVELS)}")
        if self.policy_loss not in ("clip", "cispo"):
            raise ValueError(f"policy_loss: {self.policy_loss!r} is not one of ['clip', 'cispo']")
        if self.policy_loss == "cispo" and self.importance_sampling_level != "token":
            raise ValueError("policy_loss=cispo weights tokens; it has no sequence-level form here")
        if self.dynamic_sampling and self.num_generations < 2:
            raise ValueError("dynamic_sampling drops groups of equal rewards: it needs num_generations >= 2")
        if self.entropy_coef < 0 or self.max_sampling_rounds < 0 or self.overlong_penalty_factor < 0:
            raise ValueError("entropy_coef, max_sampling_rounds and overlong_penalty_factor must be >= 0")
        limit, what = (self.max_episode_tokens, "max_episode_tokens") if self.tools else (self.max_new_tokens,
                                                                                           "max_new_tokens")
        if not 0 <= self.overlong_buffer <= limit:
            raise ValueError(f"overlong_buffer must be in [0, {what}={limit}], got {self.overlong_buffer}")
        if self.num_iterations < 1 or self.kl_coef < 0:
            raise ValueError("num_iterations must be >= 1 and kl_coef >= 0")
        per_iter = self.num_iterations * self.num_minibatches
        if self.save_every and self.save_every % per_iter:
            raise ValueError(f"save_every {self.save_every} must be a multiple of num_iterations x num_minibatches = "
                             f"{per_iter}, so checkpoints fall between iterations")


def train(cfg: Config, reward_fn: Callable | None = None) -> Path:
    """GRPO (group-normalised advantages). `reward_fn` (Python API) overrides cfg.reward_model: f(prompt texts,
    responses) -> list[float] or {"score": ..., other outputs}. With cfg.tools the responses are the episodes'
    final answers, and f also gets `episodes=` (rollout.multiturn.Episode: messages, calls, malformed, stop) and
    `rows=` (the prompt file's rows, e.g. their `answer`) when it accepts those keywords."""
    return _train(cfg, "grpo", reward_fn)


def train_rloo(cfg: Config, reward_fn: Callable | None = None) -> Path:
    """RLOO (leave-one-out baselines); same config and loop as GRPO."""
    return _train(cfg, "rloo", reward_fn)


# ----------------------------------------------------------------------------------------------- REINFORCE++
@dataclass
class ReinforcePPConfig(Config):
    """`rlhfkit reinforce-pp`: REINFORCE++ (Hu 2025), critic-free policy gradient with a token-level KL reward.

    REINFORCE++ ("REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models", sec. 3) keeps
    PPO's per-token KL-shaped reward and clipped update but drops the critic: the advantage of token t is the
    return from t, normalised over every response token of the batch (global normalisation, instead of GRPO's
    per-prompt one):

        r_t = I(t = last) * score - kl_coef * (log pi_old(y_t) - log pi_ref(y_t)),
        G_t = sum_{s >= t} gamma^(s-t) r_s,   A_t = (G_t - mean(G)) / std(G)

    (advantages.reinforce_pp_advantages). With group_baseline (the default, REINFORCE++-baseline of the same
    paper) each prompt's num_generations scores are first centred on their mean; without it one sample per prompt
    works. Everything else (batching, clipping, GSPO / CISPO / DAPO flags, entropy) is the GRPO loop.

        from rlhfkit import reinforce_pp
        reinforce_pp.train(reinforce_pp.Config(model="runs/sft", data="prompts.jsonl",
                                               reward_model=["rlhfkit.world:correct_reward"]))
    """

    kl_coef: float = 0.04
    """Weight of the per-token k1 KL penalty in the REWARD (REINFORCE++'s token-level KL; no KL loss term);
    0: no reference model is loaded. `beta` is its deprecated name."""
    group_baseline: bool = True
    """Subtract each prompt's mean score before the global normalisation (REINFORCE++-baseline); false: plain
    REINFORCE++, and num_generations may be 1."""
    gamma: float = 1.0
    """Discount of the return G_t (1: the undiscounted sum of the remaining rewards)."""

    def min_generations(self) -> int:
        return 2 if self.group_baseline else 1

    def validate(self) -> None:
        super().validate()
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


def train_reinforce_pp(cfg: ReinforcePPConfig, reward_fn: Callable | None = None) -> Path:
    """REINFORCE++ with the GRPO loop; `reward_fn` (Python API) overrides cfg.reward_model."""
    return _train(cfg, "reinforce_pp", reward_fn)


# `from rlhfkit import reinforce_pp` and `rlhfkit reinforce-pp` (rlhfkit.PUBLIC, cli.main.COMMANDS): REINFORCE++
# under the two names every command has, Config and train
reinforce_pp = SimpleNamespace(__doc__=inspect.cleandoc(ReinforcePPConfig.__doc__), Config=ReinforcePPConfig,
                               train=train_reinforce_pp)


def group_advantages(scores: torch.Tensor, group_size: int, estimator: str, scale_by_std: bool) -> torch.Tensor:
    """(N,) scores, groups contiguous -> (N,) advantages, one per completion."""
    if estimator == "rloo":
        return rloo_advantages(scores, group_size)
    return grpo_advantages(scores, group_size, scale_by_std=scale_by_std)


def shaped_scores(ro: Rollout, cfg: Config) -> torch.Tensor:
    """(B,) the reward the advantages see: the score plus DAPO's overlong penalty when overlong_buffer > 0 (a tool
    episode's length is its whole sequence, against max_episode_tokens)."""
    if not cfg.overlong_buffer:
        return ro.scores
    lengths, limit = (ro.attention.sum(-1), cfg.max_episode_tokens) if cfg.tools else (ro.lengths, cfg.max_new_tokens)
    return ro.scores + overlong_penalty(lengths, limit, cfg.overlong_buffer,
                                        cfg.overlong_penalty_factor).to(ro.scores.dtype)


def _train(cfg: Config, estimator: str, reward_fn: Callable | None) -> Path:
    """The loop of the family: `estimator` (grpo, rloo, reinforce_pp) picks the advantage and where the KL goes."""
    # 0. set-up: prompts, policy, reference (only when the KL has a weight), engine, reward
    run, _ = online.set_up(cfg, estimator, with_ref=cfg.kl_coef > 0)
    dist, policy, ref = run.dist, run.policy, run.ref
    G = cfg.num_generations
    mb = check_batch(cfg.rollout_batch_size * G, cfg.num_minibatches, cfg.micro_batch_size,
                     cfg.gradient_accumulation_steps, dist.world_size)
    if cfg.rollout_batch_size % dist.world_size:
        raise ValueError(f"rollout_batch_size {cfg.rollout_batch_size} prompts do not split over "
                         f"{dist.world_size} processes (a prompt's group stays on one process)")
    per_iter = cfg.num_iterations * cfg.num_minibatches
    on_policy = per_iter == 1
    sampler = StepSampler(len(run.prompts), cfg.rollout_batch_size, cfg.seed)
    n_steps = total_steps(cfg, sampler.steps_per_epoch * per_iter)
    engine = Engine(cfg, TokenLogprobs(policy), n_steps, name=estimator, dist_info=dist)
    packed = use_packed(policy, dist.device)  # the GPU layout for the update's forwards (layout.use_packed)
    dev = engine.dist.device
    online.start(run, engine, reward_fn)
    n_local = cfg.rollout_batch_size // dist.world_size
    c_local, mb_local = n_local * G, mb // dist.world_size
    reinforce_pp = estimator == "reinforce_pp"
    # REINFORCE++ puts the KL to the reference into the reward, which needs the rollout-time log-probs
    recompute = not on_policy or (reinforce_pp and ref is not None)
    share = cfg.share_prompt and not cfg.tools  # a tool episode is not [prompt | completion]: padded rows

    def sample(it: int, round_: int) -> Rollout:
        """One rollout of n_local prompts x G. Round 0 takes the iteration's prompts; dynamic sampling's extra
        rounds draw prompts at random from (seed, iteration, rank, round), so a resumed run redraws the same."""
        if round_ == 0:
            chosen = sampler.indices(it)[dist.rank * n_local:(dist.rank + 1) * n_local]
        else:
            g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) * 1009 + dist.rank + 65_536 * round_)
            chosen = torch.randint(len(run.prompts), (n_local,), generator=g).tolist()
        idx = [i for i in chosen for _ in range(G)]
        gen = rollout_generator(cfg.seed, it, dist.rank + 65_536 * round_, dev)
        return online.sample(run, engine, policy, idx, gen, recompute_logprobs=recompute, share_prompt=share)

    buf: dict = {}
    for step in engine.remaining_steps():
        it, k = divmod(step, per_iter)
        if buf.get("it") != it:
            # 1. rollout: G completions of each of this process's prompts, contiguous per prompt (prompt-major)
            ro = sample(it, 0)
            extra, rounds, dropped = 0, 0, 0
            if cfg.dynamic_sampling:
                # 1b. DAPO dynamic sampling (Yu et al. 2025, sec. 3.2): keep the groups whose rewards differ, refill
                keep = informative_groups(shaped_scores(ro, cfg), G)  # (n_local,)
                dropped = int((~keep).sum())
                parts, n_keep = [(ro, keep)], int(keep.sum())
                while n_keep < n_local and rounds < cfg.max_sampling_rounds:
                    rounds += 1
                    more = sample(it, rounds)
                    extra += len(more.texts)
                    k_more = informative_groups(shaped_scores(more, cfg), G)
                    dropped += int((~k_more).sum())
                    parts.append((more, k_more))
                    n_keep += int(k_more.sum())
                if extra:  # the informative groups in sampling order, then zero-signal ones of round 0 if short
                    groups, need = [], n_local
                    for r, gi in [(r, m.nonzero().flatten()) for r, m in parts] + [(ro, (~keep).nonzero().flatten())]:
                        take = gi[:need]
                        need -= len(take)
                        if len(take):
                            groups.append((r, (take[:, None] * G + torch.arange(G, device=take.device)).flatten()))
                    ro = concat_rollouts(groups, run.tokenizer.pad_token_id)
            # 2. advantages: group-relative (GRPO / Dr. GRPO / RLOO, one per completion) or REINFORCE++ (per token)
            scores = shaped_scores(ro, cfg)
            loss_mask = ro.mask & ro.has_eos[:, None] if cfg.mask_truncated_completions else ro.mask  # DAPO sec. 3.4
            if reinforce_pp:
                lp, rp, m = ro.logprobs, ro.ref_logprobs if ref is not None else ro.logprobs, loss_mask
                if cfg.tools:  # discount over the policy's own steps: the tool results between turns compacted away
                    (lp, m), (rp, _) = compact(lp, loss_mask), compact(rp, loss_mask)
                adv, _ = reinforce_pp_advantages(scores, lp, rp, m, cfg.kl_coef, G if cfg.group_baseline else None,
                                                 cfg.gamma)
                adv = expand(adv, loss_mask) if cfg.tools else adv
            else:
                adv = group_advantages(scores, G, estimator, cfg.scale_rewards)
            group_std = scores.view(-1, G).std(dim=1) if G > 1 else torch.zeros(len(scores))
            roll_metrics = online.rollout_metrics(ro, {
                "rollout/score_std": group_std.mean().item(),  # within-group spread: the learning signal
                "rollout/frac_zero_std": (group_std == 0).float().mean().item()}, {  # groups with no signal
                "kl/beta": cfg.kl_coef,  # the KL weight, under the key every online trainer logs it as
                **({"rollout/overlong_penalty": (scores - ro.scores).mean().item()} if cfg.overlong_buffer else {}),
                **({"rollout/extra_generations": float(extra), "rollout/sampling_rounds": float(rounds),
                    "rollout/zero_signal_groups": float(dropped)} if cfg.dynamic_sampling else {})})
            buf = {"it": it, "ro": ro, "adv": adv, "loss_mask": loss_mask}
        ro, adv = buf["ro"], buf["adv"]
        metrics = dict(roll_metrics)
        online.watch(run, step, policy, metrics)
        # 3. one optimizer step on minibatch j of pass `epoch` over the rollout
        epoch, j = divmod(k, cfg.num_minibatches)
        perm = (torch.arange(c_local) if on_policy else
                torch.randperm(c_local, generator=torch.Generator().manual_seed(cfg.seed * 7919 + it * 131 + epoch)))
        rows = perm[j * mb_local:(j + 1) * mb_local].to(dev)
        mb_tokens = mean_over_ranks({"t": float(buf["loss_mask"][rows].sum())})["t"] * dist.world_size
        stats = {k: 0.0 for k in ("train/loss", "policy/loss", "policy/clipfrac", "policy/approx_kl", "policy/ratio",
                                  "policy/entropy", "kl/token", "kl/seq")}
        if cfg.policy_loss == "cispo":
            stats["policy/is_weight"] = 0.0
        high = cfg.epsilon_low if cfg.epsilon_high is None else cfg.epsilon_high
        for micro in rows.split(cfg.micro_batch_size):
            b = ro.rows(micro)
            lay = (rows_layout(b["input_ids"], b["response_mask"], run.tokenizer.pad_token_id, packed)
                   if share else None)
            with engine.autocast():
                fwd = engine.model(b["input_ids"], b["attention"], b["response_mask"], cfg.temperature,
                                   with_entropy=True, layout=lay)
            lp, mask = fwd["logprobs"], buf["loss_mask"][micro]
            old = lp.detach() if on_policy else b["logprobs"]
            if cfg.policy_loss == "cispo":  # MiniMax-M1 sec. 3.1: truncated stop-gradient importance weights
                pl, ps = cispo_policy_loss(lp, old, adv[micro], mask, high, cfg.aggregation)
            else:  # PPO-clip; DAPO's clip-higher via epsilon_high; GSPO's sequence ratio via the level
                pl, ps = ppo_policy_loss(lp, old, adv[micro], mask, cfg.epsilon_low, cfg.aggregation, high,
                                         cfg.importance_sampling_level)
            loss = pl
            if cfg.entropy_coef:
                loss = loss + entropy_bonus(fwd["entropy"], mask, cfg.entropy_coef, cfg.aggregation)
            if ref is not None:
                if not reinforce_pp:
                    # KL as a loss term with the k3 estimator (GRPO eq. 4; PITFALLS #3), aggregated like the loss;
                    # REINFORCE++ has it in the reward instead
                    loss = loss + cfg.kl_coef * aggregate(kl_k3(lp, b["ref_logprobs"]), mask, cfg.aggregation)
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
            if "is_weight" in ps:
                stats["policy/is_weight"] += w * float(ps["is_weight"])
        if ref is None:
            del stats["kl/token"], stats["kl/seq"]
        # 4. log the step; early stop
        if online.end_step(run, engine, metrics, stats, f"iteration {it} pass {epoch} minibatch {j}"):
            break
    return online.finish(run, engine, policy)


def bench_batch_overrides(batch: int) -> dict:
    """`rlhfkit bench grpo|rloo --batch N` (BENCHMARKS.md, TRL semantics): N completions per optimizer step =
    N/4 prompts x 4 generations, 32 new tokens at temperature 1, one on-policy update per rollout."""
    if batch % 4:
        raise ValueError(f"--batch {batch}: grpo/rloo benchmarks use 4 generations per prompt; use a multiple of 4")
    return {"rollout_batch_size": batch // 4, "num_generations": 4, "num_minibatches": 1, "num_iterations": 1,
            "micro_batch_size": batch, "gradient_accumulation_steps": 1, "max_new_tokens": 32, "temperature": 1.0}
