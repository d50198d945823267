"""`rlhfkit ppo`: PPO against a reward model with a KL-shaped reward (InstructGPT stage 3).

The recipe of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") with the details listed
in "The N Implementation Details of RLHF with PPO" (Huang et al. 2024), each done on purpose:
  - reward per response token t:  r_t = -beta * KL_t  (+ score at the last token), KL_t = k1 = log pi - log pi_ref
    (Ziegler eq. 2); responses with no EOS are penalised; optional score clipping and reward scaling;
  - beta fixed or steered to a target KL by the adaptive controller (Ziegler sec. 2.2);
  - a critic: a separate value model (backbone of the policy or of the reward model + a ZERO-initialised scalar
    head, PITFALLS #10) or a value head on the policy's own backbone (critic=shared);
  - GAE (gamma, lambda) on the per-token rewards, advantages whitened per batch;
  - clipped surrogate + clipped value loss, ppo_epochs passes over shuffled minibatches.

Batch semantics (PITFALLS #16; the settings are named and checked, never silently adjusted):
  rollout_batch_size   prompts sampled per PPO iteration, over all processes (one response each)
  num_minibatches      the rollout is split into this many minibatches; ONE optimizer step per minibatch
  micro_batch_size     rows per forward/backward on one process; gradient_accumulation_steps of them per step
  ppo_epochs           passes over the rollout; optimizer steps per iteration = ppo_epochs x num_minibatches
  rule: rollout_batch_size / num_minibatches == micro_batch_size x gradient_accumulation_steps x world_size
Worked example: 2 processes, rollout_batch_size 64, num_minibatches 4, micro_batch_size 4,
gradient_accumulation_steps 4, ppo_epochs 2. Each iteration samples 64 prompts (32 per process), cut into 4
minibatches of 16 (8 per process = 2 micro-batches of 4), and takes 2 x 4 = 8 optimizer steps. max_steps counts
optimizer steps (so 80 = 10 iterations); save_every must be a multiple of 8, so a checkpoint never falls inside
an iteration. gradient_accumulation_steps 2 instead would be an error: 64 / 4 = 16 != 4 x 2 x 2 = 8.

    from rlhfkit import ppo
    ppo.train(ppo.Config(model="runs/sft", data="prompts.jsonl", reward_model=["runs/rm"], output_dir="runs/ppo"))

Tool use (`tools`, `max_turns`, `max_episode_tokens`; OnlineConfig): each rollout row is a multi-turn episode
(rollout.episodes.tool_rollout) whose response mask holds the policy's tokens only. The tool results are
context: no loss, no ratio, no KL, no value; GAE runs over the policy's own tokens (compacted across the gaps);
an episode that stops without an answer (turn or token budget) counts as missing its EOS (missing_eos_penalty).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rlhfkit import models
from rlhfkit.math.advantages import explained_variance, gae, kl_penalised_rewards, whiten
from rlhfkit.engine import Engine, StepSampler, total_steps
from rlhfkit.math.kl import AdaptiveKLController, FixedKLController
from rlhfkit.math.logprobs import masked_mean
from rlhfkit.math.masks import compact, expand
from rlhfkit.math.losses import entropy_bonus, ppo_policy_loss, value_loss
from rlhfkit.models.logps import TokenLogprobs
from rlhfkit.models.modeling import backbone, position_ids
from rlhfkit.algorithms import online
from rlhfkit.algorithms.online import OnlineConfig, check_batch, mean_over_ranks, micro_weight
from rlhfkit.rollout.episodes import Rollout, rollout_generator


@dataclass
class Config(OnlineConfig):
    learning_rate: float = 1e-5
    """Peak AdamW learning rate (policy and critic)."""
    num_minibatches: int = 2
    """Minibatches per pass over a rollout; one optimizer step each (see the batch semantics above)."""
    ppo_epochs: int = 4
    """Passes over each rollout (optimizer steps per iteration = ppo_epochs x num_minibatches)."""
    kl_coef: float = 0.05
    """beta: weight of the per-token KL penalty in the reward (initial value when adaptive_kl)."""
    adaptive_kl: bool = False
    """Steer beta towards target_kl with the proportional controller of Ziegler et al. 2019."""
    target_kl: float = 6.0
    """Target sequence KL (nats) for the adaptive controller."""
    kl_horizon: float = 10000.0
    """Adaptive controller horizon, in episodes (responses)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of responses that hit max_new_tokens without EOS (0: off)."""
    score_clip: float = 0.0
    """Clip reward-model scores to [-c, c] before shaping (0: off)."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance per batch without shifting their mean (PITFALLS #8)."""
    whiten_advantages: bool = True
    """Whiten advantages per batch (mean 0, std 1 over response tokens)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    clip_range_value: float = 0.2
    """Value clip around the rollout-time values (0: no value clipping)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Entropy bonus: subtract entropy_coef x the policy's token entropy from the loss (Schulman et al. 2017,
    eq. 9); 0: off. The entropy is logged either way (policy/entropy)."""
    critic: str = "separate"
    """separate: a value model with its own backbone; shared: a value head on the policy's backbone."""
    value_model: str = ""
    """Initialise the separate value model's backbone from this directory (e.g. the reward model); default: the policy."""

    def validate(self) -> None:
        self.validate_online(1)
        if self.critic not in ("separate", "shared"):
            raise ValueError(f"critic: {self.critic!r} is not one of separate, shared")
        if self.critic == "shared" and self.value_model:
            raise ValueError("value_model initialises a separate critic; it has no meaning with critic=shared")
        if self.ppo_epochs < 1 or self.entropy_coef < 0:
            raise ValueError("ppo_epochs must be >= 1 and entropy_coef >= 0")
        per_iter = self.ppo_epochs * self.num_minibatches
        if self.save_every and self.save_every % per_iter:
            raise ValueError(f"save_every {self.save_every} must be a multiple of ppo_epochs x num_minibatches = "
                             f"{per_iter}, so checkpoints fall between iterations")


# ----------------------------------------------------------------------------------------------- the critic
class ValueModel(torch.nn.Module):
    """A transformer body and a scalar head per position: values[b, t] = V(state up to token t), (B, T-1), aligned
    with the log-probs (the state that emits input_ids[:, t+1]). The head starts at zero (PITFALLS #10), so the
    first value targets are learnt from V = 0 instead of from a random offset."""

    def __init__(self, body: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        h = self.body(input_ids=input_ids, attention_mask=attention.long(), position_ids=position_ids(attention),
                      use_cache=False).last_hidden_state[:, :-1]  # (B, T-1, H)
        return self.head(h).squeeze(-1).float()  # (B, T-1)


class PolicyAndValue(torch.nn.Module):
    """Policy + critic as ONE module, so the Engine optimises, DDP-wraps and checkpoints both together."""

    def __init__(self, policy: torch.nn.Module, value: ValueModel):
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids, attention, response_mask, temperature: float) -> dict[str, torch.Tensor]:
        out = TokenLogprobs(self.policy)(input_ids, attention, response_mask, temperature, with_entropy=True)
        out["values"] = self.value(input_ids, attention)
        return out


def build_value(cfg: Config, policy: torch.nn.Module, tokenizer) -> ValueModel:
    """The critic, built from the policy BEFORE it gets LoRA adapters. shared: a head on the policy's own body (under
    LoRA, the adapters peft later injects there serve both). separate: a body of its own; under LoRA a body with
    adapters of its own whose frozen weights are the policy's own tensors when it starts from the policy (so the
    critic adds adapters and a head to memory, not a second model). The head is trainable either way."""
    if cfg.critic == "shared":  # the value head reads the policy's own backbone; value gradients reach it too
        return ValueModel(backbone(policy), policy.config.hidden_size)
    if cfg.value_model:
        src = models.load_sequence_classifier(cfg.value_model, tokenizer, cfg.trust_remote_code)
    elif cfg.lora_r:  # frozen under LoRA in both: the copy shares every weight tensor with the policy
        src = copy.deepcopy(policy, memo={id(p): p for p in policy.parameters()})
    else:
        src = copy.deepcopy(policy)
    body = backbone(src)
    # adapters on the body alone (peft task None), seeded apart from the policy's
    return ValueModel(models.apply_lora(body, cfg, None, task=None, seed=cfg.seed + 1), src.config.hidden_size)


# ----------------------------------------------------------------------------------------------- advantages
def ppo_advantages(ro: Rollout, beta: float, cfg: Config) -> dict[str, torch.Tensor]:
    """Steps 2-5 of a PPO iteration (Ziegler et al. 2019; Huang et al. 2024 details), all (B, T-1) or (B,)."""
    mask = ro.mask
    score = ro.scores.clamp(-cfg.score_clip, cfg.score_clip) if cfg.score_clip > 0 else ro.scores
    # 2. per-token reward: -beta * k1 everywhere, score (minus the no-EOS penalty) at the last response token
    rewards, kl = kl_penalised_rewards(score, ro.logprobs, ro.ref_logprobs, mask, beta, "k1",
                                       cfg.missing_eos_penalty or None, ro.has_eos)
    total = rewards.sum(-1)  # (B,) KL-penalised return, before any scaling
    # 3. optional reward scaling without a mean shift (Huang et al.; PITFALLS #8)
    if cfg.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    # 4. GAE on the critic's rollout-time values (Schulman et al. 2016). In a tool episode the steps are the
    # policy's tokens alone: the tool results between its turns are compacted away (math.masks), so they get no
    # value and do not break the recursion, and the advantages and returns are put back in place
    if ro.episodes is None:
        adv, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
    else:
        (r, steps), (v, _) = compact(rewards, mask), compact(ro.values, mask)
        adv, returns = (expand(x, mask) for x in gae(r, v, steps, cfg.gamma, cfg.lam))
    # 5. whiten advantages per batch
    if cfg.whiten_advantages:
        adv = whiten(adv, mask)
    return {"advantages": adv, "returns": returns, "kl": kl, "reward_total": total}


# ----------------------------------------------------------------------------------------------- training
def train(cfg: Config, reward_fn: Callable | None = None) -> Path:
    """Run PPO. `reward_fn` (Python API only) overrides cfg.reward_model: a RewardFn or
    f(prompts, responses) -> list[float]; with cfg.tools, also `episodes=` and `rows=` when f accepts them (the
    contract of grpo.train)."""
    # 0. set-up: prompts, policy, critic (built before the policy's LoRA adapters), reference, engine, reward
    run, value = online.set_up(cfg, "ppo", before_lora=lambda policy, tok: build_value(cfg, policy, tok))
    dist = run.dist
    module = PolicyAndValue(run.policy, value)
    mb = check_batch(cfg.rollout_batch_size, cfg.num_minibatches, cfg.micro_batch_size,
                     cfg.gradient_accumulation_steps, dist.world_size)
    per_iter = cfg.ppo_epochs * cfg.num_minibatches
    sampler = StepSampler(len(run.prompts), cfg.rollout_batch_size, cfg.seed)
    n_steps = total_steps(cfg, sampler.steps_per_epoch * per_iter)
    ctl = (AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
           else FixedKLController(cfg.kl_coef))
    engine = Engine(cfg, module, n_steps, name="ppo", dist_info=dist, extra_state={"kl_ctl": ctl.state_dict()})
    ctl.load_state_dict(engine.extra_state["kl_ctl"])  # the resumed controller state, if any
    dev = engine.dist.device
    online.start(run, engine, reward_fn)
    n_local, mb_local = cfg.rollout_batch_size // dist.world_size, mb // dist.world_size
    buf: dict[str, Any] = {}
    for step in engine.remaining_steps():
        it, k = divmod(step, per_iter)
        if buf.get("it") != it:
            # 1. rollout: this process's share of the iteration's prompts; log-probs, reference, values
            idx = sampler.indices(it)[dist.rank * n_local:(dist.rank + 1) * n_local]
            ro = online.sample(run, engine, module.policy, idx, rollout_generator(cfg.seed, it, dist.rank, dev),
                               value_fn=module.value)
            # 2-5. KL-shaped rewards, GAE, whitening (with the beta of this iteration)
            beta = ctl.value
            a = ppo_advantages(ro, beta, cfg)
            roll_metrics = online.rollout_metrics(ro, {
                "rollout/reward_total": a["reward_total"].mean().item(),
                "kl/seq": a["kl"].sum(-1).mean().item(),  # sequence KL (k1 summed over tokens), PITFALLS #3
                "kl/beta": beta}, {
                "value/explained_variance": explained_variance(ro.values, a["returns"], ro.mask).item()})
            # 6. adaptive KL controller (Ziegler et al. 2019, sec. 2.2): n_steps = episodes in this batch
            ctl.update(roll_metrics["kl/seq"], cfg.rollout_batch_size)
            engine.extra_state["kl_ctl"] = ctl.state_dict()
            buf = {"it": it, "ro": ro, **a}
        ro = buf["ro"]
        metrics = dict(roll_metrics)
        online.watch(run, step, module.policy, metrics)
        # 7. one optimizer step on minibatch k % num_minibatches of epoch k // num_minibatches
        epoch, j = divmod(k, cfg.num_minibatches)
        perm = torch.randperm(n_local, generator=torch.Generator().manual_seed(cfg.seed * 7919 + it * 131 + epoch))
        rows = perm[j * mb_local:(j + 1) * mb_local].to(dev)
        mb_mask = ro.mask[rows]
        mb_tokens = mean_over_ranks({"t": float(mb_mask.sum())})["t"] * dist.world_size
        stats = {"train/loss": 0.0, "policy/loss": 0.0, "value/loss": 0.0, "policy/clipfrac": 0.0,
                 "policy/approx_kl": 0.0, "policy/ratio": 0.0, "policy/entropy": 0.0, "value/clipfrac": 0.0}
        for micro in rows.split(cfg.micro_batch_size):
            b = ro.rows(micro)
            with engine.autocast():
                fwd = engine.model(b["input_ids"], b["attention"], b["response_mask"], cfg.temperature)
            pl, ps = ppo_policy_loss(fwd["logprobs"], b["logprobs"], buf["advantages"][micro], b["mask"],
                                     cfg.clip_range, cfg.aggregation)
            vl, vs = value_loss(fwd["values"], b["values"], buf["returns"][micro], b["mask"],
                                cfg.clip_range_value or None, cfg.aggregation)
            w = micro_weight(b["mask"], cfg.aggregation, mb_tokens, mb)
            micro_loss = pl + cfg.vf_coef * vl
            if cfg.entropy_coef:
                micro_loss = micro_loss + entropy_bonus(fwd["entropy"], b["mask"], cfg.entropy_coef, cfg.aggregation)
            engine.backward(w * micro_loss)
            engine.count(samples=len(micro), tokens=int(b["attention"].sum()))
            for key, v in (("train/loss", micro_loss), ("policy/loss", pl), ("value/loss", vl),
                           ("policy/clipfrac", ps["clipfrac"]), ("policy/approx_kl", ps["approx_kl"]),
                           ("policy/ratio", ps["ratio"]), ("value/clipfrac", vs["vf_clipfrac"]),
                           ("policy/entropy", masked_mean(fwd["entropy"], b["mask"]))):
                stats[key] += w * float(v.detach())
        # 8. log the step (weighted sums over this process's share -> sums over all processes); early stop
        if online.end_step(run, engine, metrics, stats, f"iteration {it} epoch {epoch} minibatch {j}"):
            break
    return online.finish(run, engine, module.policy, kl_coef=ctl.value)


def bench_batch_overrides(batch: int) -> dict:
    """`rlhfkit bench ppo --batch N`: N completions (N prompts x 1) per optimizer step, one epoch, one minibatch,
    32 new tokens at temperature 1 (BENCHMARKS.md), so a step compares with TRL's GRPO step of N completions."""
    return {"rollout_batch_size": batch, "num_minibatches": 1, "ppo_epochs": 1, "micro_batch_size": batch,
            "gradient_accumulation_steps": 1, "max_new_tokens": 32, "temperature": 1.0}
