"""Rollouts for online RL (PPO, GRPO, RLOO): sample, pad, score, and recompute log-probs, in numbered steps.

One function, `rollout(...)`, turns a batch of encoded prompts into everything the update needs. The steps follow
"The N Implementation Details of RLHF with PPO" (Huang et al. 2024) and Ziegler et al. 2019:

  1. sample with the KV-cache sampler: prompts LEFT-padded, temperature / top-k / top-p, stop at EOS, everything
     after the first EOS dropped (generate.sample; PITFALLS PPO #5, #6);
  2. build RIGHT-padded prompt+response tensors and a response mask (True on response tokens, EOS included: it
     is an action the policy took and must be credited);
  3. score the decoded response text with the reward function (reward models see text, so a policy and a reward
     model with different tokenizers still work);
  4. recompute the policy's log-probs with the SAME temperature as sampling (PITFALLS #7), and the reference's,
     and the critic's values, in chunks of `forward_batch_size` rows at the rollout's full length, so the
     trainer's first forward on a row has the same shapes and gives bit-identical numbers: the importance ratio is
     exactly 1 at the first update and the KL exactly 0 while policy == reference.

Tensor layout (docs/DESIGN.md): input_ids / attention / response_mask are (B, T); log-probs, values and `mask` are
(B, T-1), aligned with input_ids[:, 1:] (the token being predicted), 0 outside the mask.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlhfkit import data as data_lib
from rlhfkit.rollout import generate
from rlhfkit.engine import TrainConfig
from rlhfkit.math.losses import AGGREGATIONS
from rlhfkit.models.modeling import TokenLogprobs, adapters_disabled, rows_layout, use_packed

RewardFn = Callable[[list[Any], list[str]], dict[str, torch.Tensor]]


@dataclass
class Rollout:
    """A scored batch of sampled responses, ready for advantage estimation."""

    prompts: list[Any]  # the prompt of each row (repeated for each of its generations)
    texts: list[str]  # decoded responses (special tokens dropped)
    input_ids: torch.Tensor  # (B, T) prompt + response, right-padded
    attention: torch.Tensor  # (B, T) bool
    response_mask: torch.Tensor  # (B, T) bool, True on response tokens (EOS included)
    logprobs: torch.Tensor  # (B, T-1) policy log-probs at sampling time (temperature-scaled)
    scores: torch.Tensor  # (B,) reward
    has_eos: torch.Tensor  # (B,) bool: the response ended with EOS (not cut at max_new_tokens)
    ref_logprobs: torch.Tensor | None = None  # (B, T-1)
    values: torch.Tensor | None = None  # (B, T-1) critic values V(s_t) of the state before each response token
    reward_parts: dict[str, torch.Tensor] = field(default_factory=dict)  # extra reward outputs ("std", "score/i")
    gen_s: float = 0.0  # seconds spent sampling

    @property
    def mask(self) -> torch.Tensor:
        """(B, T-1) bool response mask aligned with the log-probs."""
        return self.response_mask[:, 1:]

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response lengths in tokens."""
        return self.response_mask.sum(-1)

    def rows(self, idx: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of a subset of rows (a micro-batch), same T as the whole rollout."""
        out = {"input_ids": self.input_ids[idx], "attention": self.attention[idx], "mask": self.mask[idx],
               "response_mask": self.response_mask[idx], "logprobs": self.logprobs[idx]}
        if self.ref_logprobs is not None:
            out["ref_logprobs"] = self.ref_logprobs[idx]
        if self.values is not None:
            out["values"] = self.values[idx]
        return out


# ----------------------------------------------------------------------------------------------- config
@dataclass
class OnlineConfig(TrainConfig):
    """Settings shared by the online trainers (ppo, grpo, rloo). Batch semantics: see ppo.py's docstring."""

    model: str = ""
    """Policy to train: a local directory or hub id of any causal LM (usually the SFT model)."""
    tokenizer: str = ""
    """Tokenizer directory or hub id (default: the model's)."""
    ref_model: str = ""
    """Reference policy for the KL (default: a frozen copy of the initial policy)."""
    reward_model: list[str] = field(default_factory=list)
    """Reward sources, comma-separated: a reward-model directory (single or ensemble, normalisation applied),
    http://127.0.0.1:PORT (serve-rm), or package.module:function (e.g. rlhfkit.world:gold_reward)."""
    reward_weights: list[float] = field(default_factory=list)
    """Weights of the reward sources (default: 1 each); the reward is their weighted sum."""
    data: str = ""
    """Prompt file or hub id: rows with a `prompt` column (string or messages)."""
    split: str = "train"
    """Split to use for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt."""
    skip_invalid: bool = False
    """Skip (and count) invalid rows instead of stopping at them."""
    max_prompt_length: int = 256
    """Prompts longer than this many tokens are cut from the left (counted)."""
    max_new_tokens: int = 64
    """Maximum tokens sampled per response; responses cut here have no EOS (see missing_eos_penalty)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); log-probs are recomputed at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling (1.0: off; anything else biases the importance ratio, PITFALLS PPO #7)."""
    top_k: int = 0
    """Top-k sampling (0: off; biases the importance ratio like top_p)."""
    rollout_batch_size: int = 16
    """Prompts sampled per iteration, over all processes (each gets num_generations completions)."""
    num_minibatches: int = 2
    """Minibatches per pass over a rollout; one optimizer step each. completions / num_minibatches must equal
    micro_batch_size x gradient_accumulation_steps x world_size."""
    micro_batch_size: int = 8
    """Completions per forward/backward pass on one process (also the chunk size of rollout forwards)."""
    aggregation: str = "token_mean"
    """Loss reduction over tokens: token_mean, seq_mean, or seq_mean_token_sum (Dr. GRPO); sets the length
    incentive (PITFALLS #12)."""
    reward_batch_size: int = 64
    """Responses per reward-model forward."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off by default: it runs arbitrary Python)."""
    monitor_prompts: str = ""
    """Held-out probe prompts for the over-optimisation monitor ("" disables it)."""
    monitor_every: int = 0
    """Run the monitor every N optimizer steps (0: never)."""
    monitor_gold: str = ""
    """Gold judge for the monitor, package.module:function (e.g. rlhfkit.world:gold_reward); "" for none."""
    monitor_n: int = 64
    """Probe prompts the monitor uses."""
    monitor_max_new_tokens: int = 0
    """Tokens per monitor response (0: same as max_new_tokens)."""
    early_stop: bool = False
    """Stop when the monitor's held-out score has not improved for its patience."""

    def validate_online(self, completions_per_prompt: int = 1) -> None:
        self.validate_common()
        if not self.model or not self.data:
            raise ValueError("model and data are required")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 for online RL (log-probs are divided by it)")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("top_p must be in (0, 1] and top_k >= 0")
        if self.lora_dropout:
            raise ValueError("lora_dropout must be 0 for online RL: with it the sampled responses and their scored "
                             "log-probs would come from different distributions (the ratio would not start at 1)")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: {self.aggregation!r} is not one of {sorted(AGGREGATIONS)}")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_model):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.reward_model)} reward sources")
        check_batch(self.rollout_batch_size * completions_per_prompt, self.num_minibatches, self.micro_batch_size,
                    self.gradient_accumulation_steps, int(os.environ.get("WORLD_SIZE", "1")))


# ----------------------------------------------------------------------------------------------- prompts
def encode_prompts(tokenizer, prompts: list[Any], max_prompt_length: int, counter: dict | None = None) -> list[list[int]]:
    """Token ids of each prompt (chat template with the generation prompt), cut from the LEFT if too long."""
    out = []
    for p in prompts:
        ids = data_lib.encode_prompt(tokenizer, p)
        if max_prompt_length and len(ids) > max_prompt_length:
            ids = ids[-max_prompt_length:]
            if counter is not None:
                counter["prompt_truncated"] = counter.get("prompt_truncated", 0) + 1
        out.append(ids)
    return out


# ----------------------------------------------------------------------------------------------- rewards
def python_reward(fn: Callable[[list[str], list[str]], Any]) -> RewardFn:
    """Wrap f(prompts: list[str], responses: list[str]) -> list[float] as a RewardFn (prompt text = the last user
    message of a conversational prompt, as the world's judges expect)."""

    def reward(prompts: list[Any], responses: list[str]) -> dict[str, torch.Tensor]:
        out = fn([data_lib.prompt_text(p) for p in prompts], list(responses))
        if isinstance(out, dict):
            return out
        return {"score": torch.as_tensor(out, dtype=torch.float32).reshape(-1)}

    return reward


def load_reward_fn(specs: list[str], weights: list[float] | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 64) -> RewardFn:
    """A reward function from specs (reward-model dir | http://127.0.0.1:PORT | module:function), via
    rlhfkit.models.rewards; several specs are summed with `weights` (multi-objective, components as "score/<i>")."""
    from rlhfkit.models import rewards

    if not specs:
        raise ValueError("no reward source given: set reward_model (a reward-model directory, "
                         "http://127.0.0.1:PORT, or module:function)")
    if len(specs) == 1 and not weights:
        return rewards.load_reward(specs[0], device=device, batch_size=batch_size)
    return rewards.load_rewards(list(specs), list(weights) if weights else None, device=device, batch_size=batch_size)


def as_reward_fn(reward: Callable | None, specs: list[str], weights: list[float] | None, device,
                 batch_size: int = 64) -> RewardFn:
    """A reward passed in Python wins over the specs. Like a module:function spec it is called as
    f(prompt texts, responses) and may return a list of floats or a {"score": ...} dict."""
    if reward is None:
        return load_reward_fn(specs, weights, device, batch_size)
    return python_reward(reward)


# ----------------------------------------------------------------------------------------------- batching
def check_batch(completions: int, num_minibatches: int, micro_batch_size: int, gradient_accumulation_steps: int,
                world_size: int, what: str = "rollout_batch_size") -> int:
    """Completions per minibatch (global); raises unless completions / num_minibatches ==
    micro_batch_size x gradient_accumulation_steps x world_size exactly (PITFALLS PPO #16)."""
    if num_minibatches < 1 or completions % num_minibatches:
        raise ValueError(f"{what}: {completions} completions per rollout do not split into num_minibatches "
                         f"{num_minibatches} equal minibatches")
    mb = completions // num_minibatches
    per_step = micro_batch_size * gradient_accumulation_steps * world_size
    if mb != per_step:
        raise ValueError(
            f"{what}: {completions} completions / num_minibatches {num_minibatches} = {mb} per optimizer step, but "
            f"micro_batch_size {micro_batch_size} x gradient_accumulation_steps {gradient_accumulation_steps} x "
            f"world_size {world_size} = {per_step}; set gradient_accumulation_steps so they are equal")
    if completions % world_size:
        raise ValueError(f"{what}: {completions} completions do not split over {world_size} processes")
    return mb


def rollout_generator(seed: int, iteration: int, rank: int, device) -> torch.Generator:
    """The sampling RNG of one iteration, from (seed, iteration, rank) alone: a resumed run samples the same
    responses as the run it continues."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + iteration) * 1009 + rank)


# ----------------------------------------------------------------------------------------------- the rollout
def chunked_logprobs(model: torch.nn.Module, input_ids, attention, response_mask, temperature: float,
                     chunk: int, share_prompt_pad_id: int | None = None) -> torch.Tensor:
    """Log-probs (B, T-1) of the response tokens, `chunk` rows per forward (same shapes as a training micro-batch).
    With `share_prompt_pad_id`, rows of one prompt share its forward (modeling.rows_layout; same values)."""
    lp = TokenLogprobs(model) if not isinstance(model, TokenLogprobs) else model
    outs = []
    with torch.inference_mode():  # cheaper per op than no_grad; the clone below makes the result a normal tensor
        for i in range(0, input_ids.shape[0], chunk):
            ids, att, rm = input_ids[i:i + chunk], attention[i:i + chunk], response_mask[i:i + chunk]
            lay = (rows_layout(ids, rm, share_prompt_pad_id, use_packed(lp.model, ids.device))
                   if share_prompt_pad_id is not None else None)
            outs.append(lp(ids, att, rm, temperature, layout=lay)["logprobs"])
        out = torch.cat(outs)
    return out.clone()  # outside inference mode: the loss may save it for backward


@torch.no_grad()
def chunked(fn: Callable, input_ids, attention, chunk: int) -> torch.Tensor:
    return torch.cat([fn(input_ids[i:i + chunk], attention[i:i + chunk]) for i in range(0, input_ids.shape[0], chunk)])


def rollout(policy: torch.nn.Module, prompt_ids: list[list[int]], prompts: list[Any], reward_fn: RewardFn, *,
            eos_id: int, pad_id: int, decode: Callable[[list[int]], str], max_new_tokens: int,
            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
            forward_batch_size: int = 8, ref_policy: torch.nn.Module | None = None,
            value_fn: Callable | None = None, recompute_logprobs: bool = True, share_prompt: bool = False,
            autocast: Callable = contextlib.nullcontext) -> Rollout:
    """Sample one response per prompt (repeat prompts for several generations), score and annotate them.

    policy / ref_policy: HF causal LMs (or anything `generate.sample` and `TokenLogprobs` accept);
    value_fn(input_ids, attention) -> (b, T-1) values; decode(ids) -> text (special tokens dropped).
    recompute_logprobs=False leaves `logprobs` zero: a trainer doing a single on-policy update uses its own
    forward's log-probs detached as the old ones (the ratio is then 1 by construction, and one forward is saved).
    share_prompt: the log-prob forwards share each prompt among its rows (exact; modeling.rows_layout).
    autocast: the trainer's autocast (Engine.autocast): sampling and the log-prob forwards run in the precision
    the update's forwards use, so the importance ratio starts at 1 there too.
    """
    if temperature <= 0:
        raise ValueError("online RL needs temperature > 0 (log-probs are divided by it)")
    device = next(policy.parameters()).device
    # 1. sample (left-padded prompts, KV cache, stop at EOS, truncated after it)
    t0 = time.perf_counter()
    with autocast():
        s = generate.sample(policy, prompt_ids, eos_id, pad_id, max_new_tokens, temperature, top_k, top_p, generator)
    gen_s = time.perf_counter() - t0
    # 2. right-padded prompt+response, response mask (EOS counts: it is an action)
    seqs = [p + r for p, r in zip(s.prompt_ids, s.response_ids)]
    masks = [[False] * len(p) + [True] * len(r) for p, r in zip(s.prompt_ids, s.response_ids)]
    input_ids, attention, response_mask = (x.to(device) for x in data_lib.pad_right(seqs, pad_id, masks))
    # 3. score the decoded text
    texts = [decode(r) for r in s.response_ids]
    out = reward_fn(prompts, texts)
    scores = torch.as_tensor(out["score"], dtype=torch.float32).reshape(-1).to(device)
    if scores.shape[0] != len(texts):
        raise ValueError(f"reward returned {scores.shape[0]} scores for {len(texts)} responses")
    parts = {k: torch.as_tensor(v).to(device) for k, v in out.items() if k != "score"}
    # 4. log-probs at the sampling temperature (PITFALLS #7), reference log-probs, values; same chunking as training
    was_training = policy.training
    policy.eval()
    share_pad = pad_id if share_prompt else None
    with autocast():
        if recompute_logprobs:
            logprobs = chunked_logprobs(policy, input_ids, attention, response_mask, temperature, forward_batch_size,
                                        share_pad)
        else:
            logprobs = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, device=device)
        ref = None
        if ref_policy is not None:  # a LoRA policy serving as its own reference: its adapters off
            with adapters_disabled(ref_policy):
                ref = chunked_logprobs(ref_policy, input_ids, attention, response_mask, temperature,
                                       forward_batch_size, share_pad)
        values = chunked(value_fn, input_ids, attention, forward_batch_size) if value_fn is not None else None
    if was_training:
        policy.train()
    return Rollout(prompts=list(prompts), texts=texts, input_ids=input_ids, attention=attention,
                   response_mask=response_mask, logprobs=logprobs, scores=scores,
                   has_eos=torch.tensor(s.has_eos, dtype=torch.bool, device=device), ref_logprobs=ref,
                   values=values, reward_parts=parts, gen_s=gen_s)


# ----------------------------------------------------------------------------------------------- trainer helpers
# Shared by ppo.py and grpo.py (the two online trainers); small on purpose.
PROMPT_TYPES = (data_lib.DataType.PROMPT, data_lib.DataType.PROMPT_COMPLETION, data_lib.DataType.PREFERENCE,
                data_lib.DataType.UNPAIRED, data_lib.DataType.CANDIDATES)  # the types whose rows carry a `prompt`


def load_prompts(path: str, split: str = "train", column_map: dict | None = None, skip_invalid: bool = False) -> list[Any]:
    """The `prompt` of every row of a prompt file (other columns are ignored)."""
    rows = data_lib.load_rows(path, split, column_map or {}, skip_invalid, expect=PROMPT_TYPES)
    if not rows or "prompt" not in rows[0]:
        raise data_lib.DataError(f"{path}: online RL needs rows with a `prompt` column")
    return [r["prompt"] for r in rows]


def micro_weight(mask: torch.Tensor, aggregation: str, minibatch_tokens: float, minibatch_rows: float) -> float:
    """Share of a micro-batch in its minibatch's loss, so that sum over micro-batches of weight x (loss aggregated
    within the micro-batch) == the loss aggregated over the whole (global) minibatch: token_mean weighs by tokens,
    the sequence means by rows. Gradient accumulation and data parallelism then match one big batch."""
    if aggregation == "token_mean":
        return float(mask.sum()) / max(minibatch_tokens, 1.0)
    return mask.shape[0] / max(minibatch_rows, 1.0)


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over processes (identity on one process)."""
    import torch.distributed as dist

    if not dist.is_initialized() or not metrics:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def build_monitor(cfg, tokenizer, run_dir, reward_fn, ref_model, is_main: bool):
    """The over-optimisation monitor (rlhfkit.diagnostics.monitor) when configured, on the main process; None otherwise."""
    if not is_main or not getattr(cfg, "monitor_prompts", "") or getattr(cfg, "monitor_every", 0) <= 0:
        return None
    try:
        from rlhfkit.diagnostics.monitor import Monitor
    except ImportError:  # an older checkout without the monitor
        return None
    return Monitor.from_config(cfg, tokenizer, run_dir, proxy=reward_fn, ref_model=ref_model)
