"""Multi-turn tool-use episodes: generate, parse the tool calls, run them, append their results, continue.

    episodes = run_episodes(prompts, sampler(policy, eos_id, pad_id, temperature), tokenizer, registry, runner,
                            max_turns=4, max_tokens=512, max_new_tokens=96)
    batch = collate(episodes, pad_id)              # input_ids, attention, policy_mask: (B, T)
    logps = policy_logprobs(policy, batch["input_ids"], batch["attention"], batch["policy_mask"], temperature)

One episode, in numbered steps (the loop of ReAct, Yao et al. 2023, with the token bookkeeping RL needs):
  1. the prompt is rendered by the chat template with the tool schemas (`tools=`), ending in the generation prompt;
  2. the policy generates one assistant turn: up to EOS, its per-turn limit or the episode's token budget;
  3. the turn's tool calls are parsed (`parse_hermes` by default); a malformed call (bad JSON, unknown tool,
     arguments that do not fit the schema) is counted and answered with an error message the model reads;
  4. well-formed calls run in the tool worker (timeout, captured errors, byte cap); their results are appended as
     the chat template renders tool messages, with the template's text that ends the assistant turn and opens the
     next one. These tokens are context: the policy did not choose them, so they are masked from the loss and KL;
  5. repeat from 2 until a turn without calls (the answer), `max_turns` assistant turns, or `max_tokens` in all.

The policy's tokens are kept exactly as sampled (never re-tokenised from text), so the log-probs recomputed on the
assembled sequence (`policy_logprobs`) are of the very tokens the sampler drew (PITFALLS PPO #7, #13).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhfkit import data as data_lib
from rlhfkit.data import tools as tool_data
from rlhfkit.math import logprobs as logprobs_lib
from rlhfkit.math.masks import segment_mask
from rlhfkit.rollout.tools import Parser, ToolRegistry, ToolRunner, parse_hermes

# (prompt ids of the episodes still running, max new tokens) -> the new ids of each, ideally ending in EOS
Generate = Callable[[list[list[int]], int], list[list[int]]]
PROMPT, POLICY, CONTEXT = "prompt", "policy", "context"
STOPS = ("answer", "length", "max_turns", "budget")


@dataclass
class Segment:
    kind: str  # PROMPT | POLICY | CONTEXT (tool results and the template's text around them)
    ids: list[int]
    text: str


@dataclass
class Episode:
    """One multi-turn rollout. `stop`: "answer" (a turn without calls, ended by EOS), "length" (a turn without
    calls cut before its EOS), "max_turns" (the last allowed turn still called tools) or "budget" (no room left for
    the next tool results)."""

    segments: list[Segment]
    messages: list[dict]  # the conversation in TRL's form: prompt, assistant turns (with tool_calls), tool results
    calls: int = 0  # well-formed calls, run
    malformed: int = 0  # malformed calls, answered with an error message
    tool_errors: int = 0  # well-formed calls whose tool raised, timed out or crashed
    turns: int = 0  # assistant turns generated
    answer: str = ""  # the final turn's text outside any tool call ("" unless stop == "answer" or "length")
    stop: str = ""
    has_eos: bool = False  # the last policy turn ended with EOS

    @property
    def input_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.ids]

    @property
    def num_tokens(self) -> int:
        return sum(len(s.ids) for s in self.segments)

    @property
    def policy_tokens(self) -> int:
        return sum(len(s.ids) for s in self.segments if s.kind == POLICY)


# ----------------------------------------------------------------------------------------------- rendering
def tool_context(tokenizer, history: list[dict], assistant: dict, results: list[dict], tools: list[dict] | None,
                 closed: bool) -> tuple[list[int], str]:
    """The context tokens between an assistant turn that called tools and the next assistant turn: the end of that
    turn as the template writes it after its EOS (e.g. a newline), the tool results, and the generation prompt.

    Taken as a difference of two renderings, `history + [assistant]` and the same plus `results` with the generation
    prompt, so any template that renders tool messages works (Qwen2.5 folds consecutive results into one user turn).
    A turn that stopped before its EOS (`closed` False) gets the EOS token here, as context: the turn is over either
    way, and the chat template needs it closed. Tokenised on its own, so no BPE merge crosses the boundary."""
    head = tool_data.render_chat(tokenizer, history + [assistant], tools)
    full = tool_data.render_chat(tokenizer, history + [assistant] + results, tools, add_generation_prompt=True)
    if not full.startswith(head):
        raise data_lib.DataError("chat template does not render a conversation as a prefix of its continuation "
                                 "with tool results; multi-turn episodes need it to")
    eos = tokenizer.eos_token
    cut = head.rfind(eos) if eos else -1
    if cut < 0:
        raise data_lib.DataError(f"chat template does not end an assistant turn with the EOS token {eos!r}; the "
                                 "turn boundary between the policy's tokens and the tool results is then unknown")
    text = head[cut + len(eos):] + full[len(head):]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([] if closed else [tokenizer.eos_token_id]) + ids, text


def _answer_calls(parsed, registry: ToolRegistry, runner: ToolRunner, ep: Episode) -> tuple[list[dict], list[dict]]:
    """(the well-formed calls in TRL's tool_calls form, one tool message per call in order) for one turn."""
    tool_calls, results = [], []
    for call in parsed.calls:
        problem = call.error or registry.check_call(call.name, call.arguments)
        if problem:
            ep.malformed += 1
            content = f"error: {problem}"
        else:
            result = runner.call(call.name, call.arguments)
            ep.calls += 1
            ep.tool_errors += not result.ok
            content = result.content
            tool_calls.append({"type": "function", "function": {"name": call.name, "arguments": call.arguments}})
        results.append({"role": "tool", "content": content, **({"name": call.name} if call.name else {})})
    return tool_calls, results


# ----------------------------------------------------------------------------------------------- the episode loop
def run_episodes(prompts: list[Any], generate: Generate, tokenizer, registry: ToolRegistry, runner: ToolRunner, *,
                 parser: Parser = parse_hermes, max_turns: int = 4, max_tokens: int = 1024,
                 max_new_tokens: int = 256) -> list[Episode]:
    """Run one episode per prompt (messages, or a string taken as one user turn), all in lock-step: each turn is
    one `generate` call over the episodes still running. `max_turns` counts assistant turns; `max_tokens` bounds
    the whole sequence (prompt, turns and tool results); `max_new_tokens` one turn."""
    if max_turns < 1 or max_new_tokens < 1:
        raise ValueError("max_turns and max_new_tokens must be >= 1")
    tools = registry.schemas()
    tool_data.check_template_renders_tools(tokenizer, tools)
    eos_id = tokenizer.eos_token_id
    episodes = []
    # 1. prompts, rendered with the tool schemas
    for i, prompt in enumerate(prompts):
        messages = list(prompt) if data_lib.is_conversational(prompt) else [{"role": "user", "content": prompt}]
        ids = tool_data.encode_tool_prompt(tokenizer, messages, tools)
        if len(ids) >= max_tokens:
            raise ValueError(f"prompt {i} is {len(ids)} tokens: no room to generate under max_tokens={max_tokens} "
                             "(truncate prompts, or raise max_tokens)")
        episodes.append(Episode([Segment(PROMPT, ids, "")], messages))
    for turn in range(max_turns):
        running = [ep for ep in episodes if not ep.stop]
        if not running:
            break
        # 2. one assistant turn for every running episode
        rooms = [min(max_new_tokens, max_tokens - ep.num_tokens) for ep in running]
        outs = generate([ep.input_ids for ep in running], max(rooms))
        if len(outs) != len(running):
            raise ValueError(f"generate returned {len(outs)} sequences for {len(running)} prompts")
        for ep, out, room in zip(running, outs, rooms):
            out = list(out)[:room]
            if eos_id in out:  # nothing after the turn's EOS was part of the turn
                out = out[:out.index(eos_id) + 1]
            ep.has_eos = bool(out) and out[-1] == eos_id
            text = tokenizer.decode(out, skip_special_tokens=True)
            ep.segments.append(Segment(POLICY, out, text))
            ep.turns += 1
            # 3. parse; a turn without calls is the answer
            parsed = parser(text)
            if not parsed.calls:
                ep.answer, ep.stop = parsed.content, "answer" if ep.has_eos else "length"
                ep.messages.append({"role": "assistant", "content": parsed.content})
                continue
            if turn == max_turns - 1:
                ep.stop = "max_turns"
                ep.messages.append({"role": "assistant", "content": text})
                continue
            # 4. run the calls; their results (and the template around them) are context
            tool_calls, results = _answer_calls(parsed, registry, runner, ep)
            # a turn with a malformed call keeps its raw text, so transcripts show what the model wrote
            content = parsed.content if len(tool_calls) == len(parsed.calls) else text
            assistant = {"role": "assistant", "content": content, **({"tool_calls": tool_calls} if tool_calls else {})}
            ids, ctx_text = tool_context(tokenizer, ep.messages, assistant, results, tools, ep.has_eos)
            ep.messages += [assistant] + results
            if ep.num_tokens + len(ids) >= max_tokens:  # 5. no room for the results and a next turn
                ep.stop = "budget"
                continue
            ep.segments.append(Segment(CONTEXT, ids, ctx_text))
    return episodes


def sampler(model, eos_id: int, pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            generator: torch.Generator | None = None) -> Generate:
    """A `Generate` over rlhfkit's KV-cache sampler (`rollout.generate.sample`): left-padded prompts, stop at EOS."""
    from rlhfkit.rollout import generate as generate_lib

    def generate(prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        return generate_lib.sample(model, prompt_ids, eos_id, pad_id, max_new_tokens, temperature, top_k, top_p,
                                   generator).response_ids

    return generate


# ----------------------------------------------------------------------------------------------- tensors
def collate(episodes: list[Episode], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) `input_ids`, `attention` and `policy_mask` (True exactly on the policy's tokens, built
    from the segment spans by `masks.segment_mask`)."""
    input_ids, attention, _ = data_lib.pad_right([ep.input_ids for ep in episodes], pad_id)
    S = max(len(ep.segments) for ep in episodes)
    lengths = torch.zeros(len(episodes), S, dtype=torch.long)
    is_policy = torch.zeros(len(episodes), S, dtype=torch.bool)
    for b, ep in enumerate(episodes):
        lengths[b, :len(ep.segments)] = torch.tensor([len(s.ids) for s in ep.segments])
        is_policy[b, :len(ep.segments)] = torch.tensor([s.kind == POLICY for s in ep.segments])
    return {"input_ids": input_ids, "attention": attention,
            "policy_mask": segment_mask(lengths, is_policy, input_ids.shape[1])}


def policy_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention: torch.Tensor,
                    policy_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, T-1) log-probs of exactly the policy's tokens (0 elsewhere), aligned with input_ids[:, 1:].

    One forward over the whole episode (the policy's turns see the tool results before them, as when sampled);
    the LM head runs only at the positions that predict a policy token, and the log-softmax divides by the sampling
    temperature (`logprobs.token_logprobs`, PITFALLS PPO #7)."""
    from rlhfkit.models.modeling import hidden_states

    mask = policy_mask[:, 1:]  # (B, T-1): position t predicts token t+1
    h = hidden_states(model, input_ids, attention)[:, :-1][mask]  # (N, H)
    logits = model.get_output_embeddings()(h)  # (N, V)
    picked = logprobs_lib.token_logprobs(logits, input_ids[:, 1:][mask], temperature)  # (N,)
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """`tools/...` metrics of a batch of episodes (the malformed-call rate is over all calls the model attempted)."""
    n = max(len(episodes), 1)
    calls, malformed = sum(e.calls for e in episodes), sum(e.malformed for e in episodes)
    out = {
        "tools/calls_per_episode": calls / n,
        "tools/malformed_call_rate": malformed / max(calls + malformed, 1),
        "tools/error_rate": sum(e.tool_errors for e in episodes) / max(calls, 1),
        "tools/turns": sum(e.turns for e in episodes) / n,
        "tools/policy_tokens": sum(e.policy_tokens for e in episodes) / n,
    }
    out.update({f"tools/stop_{s}": sum(e.stop == s for e in episodes) / n for s in STOPS})
    return out
