"""`rlhfkit eval`: is the policy better, or only better at fooling the reward model?

For one or more policies (model directories, or files of pre-generated `prompt`, `completion` rows) and a prompt
set, this measures:
  - the reward under every judge given (reward models, reward functions, the world's gold judge and its
    components on world prompts), with the ensemble's disagreement when a judge reports one;
  - the win rate against a reference policy, with a 95% Wilson interval, ties counted half (metrics.win_rate);
  - the Monte-Carlo sequence KL to a reference model, in nats: the policy's own samples scored under both
    models at the sampling temperature (PITFALLS PPO #3, #7);
  - mean response length in tokens, distinct-n, self-BLEU (mode collapse), refusal rate;
  - a per-category breakdown (the world's prompt `kind`, or a user's `category` column).

    rlhfkit eval --policies runs/sft,runs/ppo --prompts heldout.jsonl --judges rm=runs/rm \\
        --gold rlhfkit.world:gold_reward --reference sft --ref-model runs/sft --output eval.json

The demo calls `evaluate_policy(model, tokenizer, rows, judges=...)` directly with already-loaded models.
Sampling: a fixed seed per call (the same prompts and the same random stream for every policy, so differences
are the policies', not the dice's); temperature 1 by default (temperature 0 = greedy; then no KL is reported,
because a Monte-Carlo KL needs samples from the policy itself).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import config as config_lib
from . import data as data_lib
from . import metrics as M

RewardFn = Callable[[list, list], Any]  # fn(prompts, responses) -> {"score": (B,) tensor, "std"?: (B,)}
WORLD_GOLD = "rlhfkit.world:gold_reward"


@dataclass
class Config:
    policies: list[str] = field(default_factory=list)
    """Policies to evaluate: model directories (sampled here) or JSONL/JSON files of `prompt`, `completion` rows
    (scored as they are). Name each as name=path, or the directory / file stem is the name."""
    prompts: str = ""
    """Prompt file or hub id with a `prompt` column (and optionally `kind` or `category`); required for model
    policies. Empty with the world gold judge: the world's held-out prompts."""
    output: str = "eval.json"
    """JSON file the results are written to."""
    tokenizer: str = ""
    """Tokenizer (default: each policy's own; also used to count tokens of sample files)."""
    judges: dict[str, str] = field(default_factory=dict)
    """Judges as name=spec, spec = reward-model dir | http URL | module:function (rlhfkit.rewards.load_reward)."""
    gold: str = ""
    """A gold / held-out judge spec, reported as `gold` (rlhfkit.world:gold_reward adds gold components and
    style rates on world prompts)."""
    reference: str = ""
    """Name of the policy (among `policies`) that the others' win rate is measured against (by the first judge
    that is gold, else the first judge)."""
    ref_model: str = ""
    """Reference model directory for the Monte-Carlo sequence KL (e.g. the SFT model); empty: no KL."""
    max_new_tokens: int = 64
    """Maximum tokens generated per response."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy; then no KL)."""
    batch_size: int = 64
    """Prompts per generation / scoring batch."""
    limit: int = 0
    """Use only the first N prompts (0: all)."""
    split: str = "train"
    """Split for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt."""
    self_bleu_sample: int = 64
    """Responses scored for self-BLEU (against all others); 0: all (quadratic)."""
    n_samples_kept: int = 8
    """Sample responses per policy kept in the JSON (for the report)."""
    seed: int = 42
    """Sampling seed (the same for every policy)."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def validate(self) -> None:
        if not self.policies:
            raise ValueError("policies: give at least one model directory or sample file")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")


# ----------------------------------------------------------------------------------------------- judges
def load_judge(spec: str) -> RewardFn:
    """A judge from a spec via rlhfkit.rewards.load_reward; a plain `module:function` also works without it."""
    try:
        from .rewards import load_reward  # written alongside: RM dir | http URL | module:function
    except ImportError:
        load_reward = None
    if load_reward is not None:
        return load_reward(spec)
    if ":" not in spec or "/" in spec:
        raise ValueError(f"judge {spec!r}: only module:function is supported without rlhfkit.rewards")
    mod, fn = spec.split(":", 1)
    return getattr(importlib.import_module(mod), fn)


def call_judge(fn: RewardFn, prompts: list, responses: list[str]) -> tuple[list[float], list[float] | None]:
    """Scores (and ensemble std, when reported) of `responses` to `prompts` under one judge.

    A judge is called with the prompts as the rows hold them (strings or messages) and response texts. It may
    return {"score": (B,), "std"?: (B,)}, a tensor or a list. A plain function written for text prompts (like
    rlhfkit.world:gold_reward) is retried with the user-message text when it fails on messages.
    """
    try:
        out = fn(prompts, responses)
    except (TypeError, AttributeError, KeyError, ValueError):
        if not any(data_lib.is_conversational(p) for p in prompts):
            raise
        out = fn([data_lib.prompt_text(p) for p in prompts], responses)
    std = None
    if isinstance(out, dict):
        std = out.get("std")
        out = out["score"]
    scores = [float(x) for x in (out.flatten().tolist() if isinstance(out, torch.Tensor) else out)]
    if std is not None:
        std = [float(x) for x in (std.flatten().tolist() if isinstance(std, torch.Tensor) else std)]
    if len(scores) != len(responses):
        raise ValueError(f"judge returned {len(scores)} scores for {len(responses)} responses")
    return scores, std


def is_world_gold(spec_or_fn: Any) -> bool:
    if isinstance(spec_or_fn, str):
        return spec_or_fn.replace(".gold:", ":") == WORLD_GOLD
    from .world import gold_reward

    return spec_or_fn is gold_reward


# ----------------------------------------------------------------------------------------------- models
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside DDP / TokenLogprobs wrappers."""
    while True:
        inner = getattr(model, "module", None) or (model.model if type(model).__name__ == "TokenLogprobs" else None)
        if inner is None:
            return model
        model = inner


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float, seed: int,
                     batch_size: int = 64, max_prompt_length: int = 512):
    """One response per prompt with a fixed-seed generator: (prompt_ids, response_ids, has_eos, texts).

    response_ids keep the EOS when the model emitted one (it is part of the sequence whose log-prob we score)."""
    from .generate import sample

    model = unwrap(model)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    enc = [data_lib.encode_prompt(tokenizer, p)[-max_prompt_length:] for p in prompts]
    p_ids, r_ids, eos = [], [], []
    for i in range(0, len(enc), batch_size):
        s = sample(model, enc[i : i + batch_size], tokenizer.eos_token_id, tokenizer.pad_token_id,
                   max_new_tokens, temperature, generator=gen)
        p_ids += s.prompt_ids
        r_ids += s.response_ids
        eos += s.has_eos
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in r_ids]
    return p_ids, r_ids, eos, texts


@torch.no_grad()
def sequence_logps(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                   temperature: float = 1.0, batch_size: int = 64) -> torch.Tensor:
    """(B,) sum over response tokens of log p(token | prefix) at `temperature` (modeling.TokenLogprobs)."""
    from .modeling import TokenLogprobs

    lm = unwrap(model)
    was_training = lm.training
    lm.eval()
    scorer = TokenLogprobs(lm)
    device = next(lm.parameters()).device
    out = []
    for i in range(0, len(prompt_ids), batch_size):
        seqs = [p + r for p, r in zip(prompt_ids[i : i + batch_size], response_ids[i : i + batch_size])]
        masks = [[False] * len(p) + [True] * len(r)
                 for p, r in zip(prompt_ids[i : i + batch_size], response_ids[i : i + batch_size])]
        ids, attn, target = data_lib.pad_right(seqs, pad_id, masks)
        lp = scorer(ids.to(device), attn.to(device), target.to(device), temperature)["logprobs"]  # (b, T-1)
        out.append(lp.sum(-1).double().cpu())
    if was_training:
        lm.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def response_lengths(response_ids: list[list[int]], eos_id: int) -> list[int]:
    """Tokens per response, not counting the final EOS."""
    return [len(r) - (1 if r and r[-1] == eos_id else 0) for r in response_ids]
