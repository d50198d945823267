"""Scoring for online RL: reward functions over (prompt, response text), and the chunked log-prob and value
forwards of a rollout.

Reward functions see text, so a policy and a reward model with different tokenizers still work. The log-prob
forwards run `chunk` rows at a time at the rollout's full length: the same shapes as a training micro-batch, so
the trainer's first forward on a row gives bit-identical numbers (the importance ratio is exactly 1 at the first
update and the KL exactly 0 while policy == reference; Huang et al. 2024, "The N Implementation Details of RLHF
with PPO").
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Callable

import torch

from rlhfkit import data as data_lib
from rlhfkit.models.layout import rows_layout, use_packed
from rlhfkit.models.logps import TokenLogprobs
from rlhfkit.models.rewards import call_with_context

RewardFn = Callable[[list[Any], list[str]], dict[str, torch.Tensor]]


# ----------------------------------------------------------------------------------------------- rewards
def python_reward(fn: Callable[[list[str], list[str]], Any]) -> RewardFn:
    """Wrap f(prompts: list[str], responses: list[str]) -> list[float] as a RewardFn (prompt text = the last user
    message of a conversational prompt, as the world's judges expect). Context keywords of tool rollouts
    (`episodes`, `rows`) reach f when it accepts them (models.rewards.call_with_context)."""

    def reward(prompts: list[Any], responses: list[str], **context) -> dict[str, torch.Tensor]:
        out = call_with_context(fn, [data_lib.prompt_text(p) for p in prompts], list(responses), **context)
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


# ----------------------------------------------------------------------------------------------- tool rewards
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def answer_correct(text: str, expected: Any) -> bool:
    """Whether a final answer states `expected`: for a number, the LAST number in the text equals it exactly
    ("The answer is 56,088." for 56088; 0.5 for "1/2"); otherwise the expected text appears in it, ignoring case."""
    want = _number(str(expected))
    if want is not None:
        found = _NUMBER.findall(text)
        return bool(found) and _number(found[-1]) == want
    return bool(str(expected).strip()) and str(expected).strip().lower() in text.lower()


def make_tool_reward(correct: float = 1.0, malformed: float = -0.25, per_call: float = 0.0) -> Callable:
    """A reward for tool rollouts from the final answer and the trajectory:

        score = correct x [the answer states the row's `answer`] + malformed x (malformed calls)
                + per_call x (well-formed calls)

    e.g. with the defaults, a right answer after one malformed and two good calls scores 1 - 0.25 = 0.75. The
    components come back too ("correct", "malformed", "calls"; logged as rollout/correct, ...). It needs the
    prompt rows' `answer` column (tool_rollout passes `rows=`) and the episodes."""

    def tool_reward(prompts: list[str], responses: list[str], *, episodes: list, rows: list[dict] | None = None
                    ) -> dict[str, torch.Tensor]:
        if not rows or any("answer" not in r for r in rows):
            raise ValueError("tool_reward scores the final answer against the prompt rows' `answer` column, and "
                             "some rows have none (use --column-map to name it, or give another reward)")
        right = torch.tensor([float(answer_correct(t, r["answer"])) for t, r in zip(responses, rows)])
        bad = torch.tensor([float(ep.malformed) for ep in episodes])
        calls = torch.tensor([float(ep.calls) for ep in episodes])
        return {"score": correct * right + malformed * bad + per_call * calls, "correct": right, "malformed": bad,
                "calls": calls}

    return tool_reward


tool_reward = make_tool_reward()  # the spec rlhfkit.rollout.score:tool_reward


# ----------------------------------------------------------------------------------------------- log-probs
def chunked_logprobs(model: torch.nn.Module, input_ids, attention, response_mask, temperature: float,
                     chunk: int, share_prompt_pad_id: int | None = None) -> torch.Tensor:
    """Log-probs (B, T-1) of the response tokens, `chunk` rows per forward (same shapes as a training micro-batch).
    With `share_prompt_pad_id`, rows of one prompt share its forward (layout.rows_layout; same values)."""
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
