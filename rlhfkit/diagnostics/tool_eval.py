"""`rlhfkit eval --tools calculator --max-turns 4`: policies sampled as multi-turn tool-use episodes.

Each prompt becomes one episode (rollout.multiturn.run_episodes: generate, run the calls, append the results,
continue), sampled with the same seed for every policy. The episode's final answer is what the judges score, so
every metric of `evaluate_texts` is reported as usual, and the tool metrics join them:

  tool_call_validity   1 - malformed calls / calls attempted (1.0 when no call was attempted)
  calls_per_episode    well-formed calls run, per episode
  task_success         the fraction of episodes whose final answer is right: by the `success` function when one is
                       given (f(prompts, answers, *, episodes, rows) -> 0/1 per episode, keywords as it accepts them),
                       else by the rows' `answer` column (rollout.score.answer_correct); absent with neither
  tools                {turns, error_rate, policy_tokens, stop_answer, stop_length, stop_max_turns, stop_budget, ...}

The Monte-Carlo KL to a reference model sums log-ratios over the policy's own tokens of each episode (the tool
results are context, scored under neither).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from rlhfkit.diagnostics import metrics as M
from rlhfkit.models.rewards import call_with_context
from rlhfkit.rollout import multiturn
from rlhfkit.rollout.score import answer_correct


def runner(specs: list[str]):
    """The tools of `specs` (calculator, lookup=TABLE, module:function) in a worker process (rollout.tools)."""
    from rlhfkit.rollout.tools import ToolRunner, load_tools

    return ToolRunner(load_tools(specs))


def load_success(spec: str) -> Callable:
    """A success function from `package.module:function`, called as in `successes`."""
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def sample_episodes(model, tokenizer, prompts: list, runner, *, max_turns: int, max_tokens: int,
                    max_new_tokens: int, temperature: float, seed: int, batch_size: int = 64,
                    generate: multiturn.Generate | None = None) -> list[multiturn.Episode]:
    """One episode per prompt, `batch_size` episodes in lock-step at a time, from a fixed-seed generator (or from
    `generate`, a scripted policy in tests)."""
    if generate is None:
        device = next(model.parameters()).device
        generate = multiturn.sampler(model, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature,
                                     generator=torch.Generator(device=device).manual_seed(seed))
    episodes = []
    for i in range(0, len(prompts), batch_size):
        episodes += multiturn.run_episodes(prompts[i:i + batch_size], generate, tokenizer, runner.registry, runner,
                                           max_turns=max_turns, max_tokens=max_tokens, max_new_tokens=max_new_tokens)
    return episodes


def successes(episodes: list, rows: list[dict], success: Callable | None = None) -> list[float] | None:
    """Per episode 1.0 / 0.0: the task solved (by `success`, else the rows' `answer`), or None when unknowable."""
    answers = [ep.answer for ep in episodes]
    if success is not None:
        out = call_with_context(success, [r["prompt"] for r in rows], answers, episodes=episodes, rows=rows)
        return [float(x) for x in (out.tolist() if isinstance(out, torch.Tensor) else out)]
    if rows and all("answer" in r for r in rows):
        return [float(answer_correct(a, r["answer"])) for a, r in zip(answers, rows)]
    return None


def tool_metrics(episodes: list, solved: list[float] | None = None) -> dict[str, Any]:
    """The tool metrics of a batch of episodes (see the module docstring); `solved` from `successes`."""
    m = multiturn.episode_metrics(episodes)
    res: dict[str, Any] = {"tool_call_validity": 1.0 - m["tools/malformed_call_rate"],
                           "calls_per_episode": m["tools/calls_per_episode"],
                           "tools": {k.removeprefix("tools/"): v for k, v in m.items()}}
    if solved is not None:
        res["task_success"] = M.mean(solved)
    return res


@torch.no_grad()
def episode_logps(model, episodes: list, pad_id: int, temperature: float, batch_size: int) -> torch.Tensor:
    """(B,) summed log-probs of each episode's policy tokens (multiturn.policy_logprobs), float64 on the CPU."""
    from rlhfkit.diagnostics.evaluate import unwrap

    lm = unwrap(model)
    was_training = lm.training
    lm.eval()
    out = []
    for i in range(0, len(episodes), batch_size):
        b = multiturn.collate(episodes[i:i + batch_size], pad_id)
        dev = next(lm.parameters()).device
        lp = multiturn.policy_logprobs(lm, b["input_ids"].to(dev), b["attention"].to(dev),
                                       b["policy_mask"].to(dev), temperature)
        out.append(lp.sum(-1).double().cpu())
    if was_training:
        lm.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def evaluate_tool_policy(policy_model, tokenizer, prompt_rows: list[dict], runner, *, max_turns: int = 4,
                         max_tokens: int = 512, max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 42,
                         batch_size: int = 64, success: Callable | None = None, ref_model=None,
                         ref_name: str = "ref", generate: multiturn.Generate | None = None,
                         **text_kwargs) -> dict[str, Any]:
    """`evaluate.evaluate_policy` for tool episodes: the judges score the final answers (text_kwargs go to
    `evaluate_texts`: judges, gold, reference, ...), lengths are the policy's tokens per episode, and the tool
    metrics above are added; `finished_rate` is the fraction of episodes that ended with an answer."""
    from rlhfkit.diagnostics.evaluate import evaluate_texts

    t0 = time.perf_counter()
    episodes = sample_episodes(policy_model, tokenizer, [r["prompt"] for r in prompt_rows], runner,
                               max_turns=max_turns, max_tokens=max_tokens, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed, batch_size=batch_size, generate=generate)
    res = evaluate_texts(prompt_rows, [ep.answer for ep in episodes], [ep.policy_tokens for ep in episodes],
                         seed=seed, **text_kwargs)
    res["finished_rate"] = M.mean([float(ep.stop == "answer") for ep in episodes])
    solved = successes(episodes, prompt_rows, success)
    res.update(tool_metrics(episodes, solved))
    for i, (s, ep) in enumerate(zip(res["samples"], episodes)):
        s["episode"] = {"calls": ep.calls, "malformed": ep.malformed, "turns": ep.turns, "stop": ep.stop,
                        **({"success": solved[i]} if solved is not None else {})}
    if ref_model is not None and temperature > 0 and generate is None:
        pad = tokenizer.pad_token_id
        lp = episode_logps(policy_model, episodes, pad, temperature, batch_size)
        lr = lp if ref_model is policy_model else episode_logps(ref_model, episodes, pad, temperature, batch_size)
        kl = M.mc_sequence_kl(lp, lr)
        res[f"kl_to_{ref_name}"] = kl["kl"]
        res.update(kl_se=kl["se"], kl_k3=kl["k3"], kl_k3_se=kl["k3_se"])
    res["seconds"] = time.perf_counter() - t0
    return res
