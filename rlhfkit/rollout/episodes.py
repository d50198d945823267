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

`tool_rollout(...)` is the same for multi-turn tool-use episodes (rollout.multiturn): step 1 runs the episodes
(generate, call tools, append their results, continue), and the response mask of step 2 is the policy mask, True
exactly on the tokens the policy produced across its turns. Tool results and the template's text around them are
context: never in the loss, the ratio or the KL. Steps 3-4 are the same, with the reward given the episodes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlhfkit import data as data_lib
from rlhfkit.models.modeling import adapters_disabled
from rlhfkit.rollout import generate, multiturn
from rlhfkit.models.rewards import call_with_context
from rlhfkit.rollout.score import RewardFn, chunked, chunked_logprobs


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
    episodes: list | None = None  # tool rollouts: the multiturn.Episode of each row (texts are their final answers)

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


def rollout_generator(seed: int, iteration: int, rank: int, device) -> torch.Generator:
    """The sampling RNG of one iteration, from (seed, iteration, rank) alone: a resumed run samples the same
    responses as the run it continues."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + iteration) * 1009 + rank)


# ----------------------------------------------------------------------------------------------- the rollout
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
    share_prompt: the log-prob forwards share each prompt among its rows (exact; layout.rows_layout).
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
    logprobs, ref, values = _forwards(policy, input_ids, attention, response_mask, temperature, forward_batch_size,
                                      ref_policy, value_fn, recompute_logprobs, pad_id if share_prompt else None,
                                      autocast)
    return Rollout(prompts=list(prompts), texts=texts, input_ids=input_ids, attention=attention,
                   response_mask=response_mask, logprobs=logprobs, scores=scores,
                   has_eos=torch.tensor(s.has_eos, dtype=torch.bool, device=device), ref_logprobs=ref,
                   values=values, reward_parts=parts, gen_s=gen_s)


def _forwards(policy, input_ids, attention, response_mask, temperature: float, forward_batch_size: int,
              ref_policy, value_fn, recompute_logprobs: bool, share_pad: int | None, autocast):
    """Step 4: (log-probs or zeros, reference log-probs or None, values or None) of the masked tokens, in chunks of
    `forward_batch_size` rows at the rollout's full length (the shapes of the trainer's micro-batches)."""
    device = input_ids.device
    was_training = policy.training
    policy.eval()
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
    return logprobs, ref, values


def _scored(out: dict, n: int, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scores (n,), the other reward outputs) of a reward function's result, on `device`."""
    scores = torch.as_tensor(out["score"], dtype=torch.float32).reshape(-1).to(device)
    if scores.shape[0] != n:
        raise ValueError(f"reward returned {scores.shape[0]} scores for {n} responses")
    return scores, {k: torch.as_tensor(v).to(device) for k, v in out.items() if k != "score"}


# ----------------------------------------------------------------------------------------------- tool episodes
def tool_rollout(policy: torch.nn.Module, prompts: list[Any], reward_fn: RewardFn, *, tokenizer, runner,
                 rows: list[dict] | None = None, max_turns: int = 4, max_tokens: int = 512, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, forward_batch_size: int = 8,
                 ref_policy: torch.nn.Module | None = None, value_fn: Callable | None = None,
                 recompute_logprobs: bool = True, autocast: Callable = contextlib.nullcontext) -> Rollout:
    """A Rollout of multi-turn tool-use episodes, one per prompt (repeat prompts for several generations).

    runner: a rollout.tools.ToolRunner (its registry names the tools); max_turns assistant turns, max_tokens the
    whole episode (prompt, turns, tool results), max_new_tokens one turn (multiturn.run_episodes).
    The rollout's `response_mask` is the policy mask: True on every token the policy sampled, in every turn (each
    turn's EOS included), False on the prompt, the tool results and the template's text around them; log-probs,
    reference log-probs and values are computed as in `rollout` under that mask, on the very token ids sampled.
    `texts` are the episodes' final answers; `has_eos` is True for an episode that ended with an answer (a turn
    without calls, closed by EOS), so a trainer's no-EOS penalty and DAPO's overlong filtering treat an episode
    stopped by its turn or token budget as unfinished. The reward is called as reward_fn(prompts, answers,
    episodes=..., rows=...) with only the keywords it accepts (models.rewards.call_with_context): one that takes
    `episodes` / `rows` gets the episodes and the prompt file's rows (e.g. their `answer` column); any other gets
    (prompts, answers), so a reward model scores the final answer.
    """
    if temperature <= 0:
        raise ValueError("online RL needs temperature > 0 (log-probs are divided by it)")
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    # 1. the episodes: each turn sampled with the KV-cache sampler, tool calls run between turns
    t0 = time.perf_counter()
    gen = multiturn.sampler(policy, eos_id, pad_id, temperature, top_k, top_p, generator)
    with autocast():
        episodes = multiturn.run_episodes(prompts, gen, tokenizer, runner.registry, runner, max_turns=max_turns,
                                          max_tokens=max_tokens, max_new_tokens=max_new_tokens)
    return episode_rollout(policy, episodes, prompts, reward_fn, pad_id=pad_id, rows=rows, temperature=temperature,
                           forward_batch_size=forward_batch_size, ref_policy=ref_policy, value_fn=value_fn,
                           recompute_logprobs=recompute_logprobs, autocast=autocast,
                           gen_s=time.perf_counter() - t0)


def episode_rollout(policy: torch.nn.Module, episodes: list, prompts: list[Any], reward_fn: RewardFn, *,
                    pad_id: int, rows: list[dict] | None = None, temperature: float = 1.0,
                    forward_batch_size: int = 8, ref_policy: torch.nn.Module | None = None,
                    value_fn: Callable | None = None, recompute_logprobs: bool = True,
                    autocast: Callable = contextlib.nullcontext, gen_s: float = 0.0) -> Rollout:
    """Steps 2-4 of `tool_rollout` on episodes already run (multiturn.Episode, one per prompt)."""
    device = next(policy.parameters()).device
    # 2. right-padded episodes and the policy mask (masks.segment_mask over the segments' spans)
    batch = multiturn.collate(episodes, pad_id)
    input_ids, attention, response_mask = (batch[k].to(device) for k in ("input_ids", "attention", "policy_mask"))
    # 3. score the final answers, the reward function seeing the episodes if it asks for them
    texts = [ep.answer for ep in episodes]
    out = call_with_context(reward_fn, list(prompts), texts, episodes=episodes, rows=rows)
    scores, parts = _scored(out, len(texts), device)
    # 4. log-probs of exactly the policy's tokens, at the sampling temperature; reference; values
    logprobs, ref, values = _forwards(policy, input_ids, attention, response_mask, temperature, forward_batch_size,
                                      ref_policy, value_fn, recompute_logprobs, None, autocast)
    has_eos = torch.tensor([ep.stop == "answer" for ep in episodes], dtype=torch.bool, device=device)
    return Rollout(prompts=list(prompts), texts=texts, input_ids=input_ids, attention=attention,
                   response_mask=response_mask, logprobs=logprobs, scores=scores, has_eos=has_eos,
                   ref_logprobs=ref, values=values, reward_parts=parts, gen_s=gen_s, episodes=episodes)


# ----------------------------------------------------------------------------------------------- joining
def _pad_cols(x: torch.Tensor, width: int, value) -> torch.Tensor:
    """(B, W) -> (B, width), right-padded with `value`."""
    return torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), value)], dim=1)


def concat_rollouts(parts: list[tuple[Rollout, torch.Tensor]], pad_id: int) -> Rollout:
    """The chosen rows (a 1-D index tensor per rollout) of several rollouts as one, right-padded to the widest.
    Padding columns are padding (attention and masks False, log-probs 0), which the losses ignore."""
    T = max(int(r.input_ids.shape[1]) for r, _ in parts)

    def cat(name: str, value, width: int) -> torch.Tensor:
        return torch.cat([_pad_cols(getattr(r, name)[i], width, value) for r, i in parts])

    first = parts[0][0]
    keys = [k for k in first.reward_parts
            if all(k in r.reward_parts and r.reward_parts[k].dim() >= 1
                   and r.reward_parts[k].shape[0] == r.scores.shape[0] for r, _ in parts)]
    return Rollout(
        prompts=[r.prompts[j] for r, i in parts for j in i.tolist()],
        texts=[r.texts[j] for r, i in parts for j in i.tolist()],
        input_ids=cat("input_ids", pad_id, T), attention=cat("attention", False, T),
        response_mask=cat("response_mask", False, T), logprobs=cat("logprobs", 0.0, T - 1),
        scores=torch.cat([r.scores[i] for r, i in parts]), has_eos=torch.cat([r.has_eos[i] for r, i in parts]),
        ref_logprobs=None if first.ref_logprobs is None else cat("ref_logprobs", 0.0, T - 1),
        reward_parts={k: torch.cat([r.reward_parts[k][i] for r, i in parts]) for k in keys},
        gen_s=sum(r.gen_s for r, _ in parts),
        episodes=None if first.episodes is None else [r.episodes[j] for r, i in parts for j in i.tolist()])
