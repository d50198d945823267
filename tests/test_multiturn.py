"""Multi-turn tool-use episodes: the loss mask covers exactly the policy's tokens across turns, tool results are
context, malformed calls are answered and counted, budgets stop episodes, and the log-probs recomputed on the
assembled sequence are those of a plain full forward at the policy's tokens."""

import pytest
import torch

from tool_fixtures import tool_tokenizer
from rlhfkit import models
from rlhfkit.data import tools as TD
from rlhfkit.math.logprobs import token_logprobs
from rlhfkit.math.advantages import gae, gae_loop
from rlhfkit.math.masks import compact, expand, segment_mask
from rlhfkit.rollout import multiturn as M
from rlhfkit.rollout import tools as T

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "123 * 456"}}</tool_call>'
QUESTION = [{"role": "user", "content": "What is 123 times 456?"}]


@pytest.fixture(scope="module")
def tok():
    return tool_tokenizer()


@pytest.fixture(scope="module")
def runner():
    with T.ToolRunner(T.load_tools(["calculator", "tool_fixtures:explode"]), timeout_s=10) as r:
        yield r


def scripted(tok, turns: list[str], eos: bool = True):
    """A fake policy: turn i of every episode is turns[i] (+ EOS); the prompts it was given are kept in `.seen`."""
    def generate(prompt_ids, max_new_tokens):
        generate.seen.append([tok.decode(p) for p in prompt_ids])
        ids = tok(turns[len(generate.seen) - 1], add_special_tokens=False)["input_ids"]
        return [ids + ([tok.eos_token_id] if eos else []) for _ in prompt_ids]

    generate.seen = []
    return generate


# ----------------------------------------------------------------------------------------------- the pure mask
def test_segment_mask_worked_example():
    """The docstring's example: row 0 = prompt 3, policy 2, tool 2, policy 3; row 1 = prompt 2, policy 1, padding.
    Position t lies in the first segment whose cumulative end exceeds t."""
    lengths = torch.tensor([[3, 2, 2, 3], [2, 1, 0, 0]])
    is_policy = torch.tensor([[False, True, False, True], [False, True, False, False]])
    expected = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 1, 1, 1],
                             [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(segment_mask(lengths, is_policy), expected)
    assert torch.equal(segment_mask(lengths, is_policy, total=12)[:, :10], expected)
    assert not segment_mask(lengths, is_policy, total=12)[:, 10:].any()  # right padding never counts
    assert not segment_mask(lengths, torch.zeros_like(is_policy)).any()  # no policy segment: an empty mask
    with pytest.raises(ValueError, match="shorter than the longest row"):
        segment_mask(lengths, is_policy, total=9)
    with pytest.raises(ValueError, match=">= 0"):
        segment_mask(-lengths, is_policy)


def test_compact_and_expand_worked_example():
    x = torch.tensor([[1., 2., 3., 4., 5.], [6., 7., 8., 9., 10.]])
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    values, packed = compact(x, mask)
    assert torch.equal(values, torch.tensor([[2., 4., 5.], [6., 0., 0.]]))
    assert torch.equal(packed, torch.tensor([[True, True, True], [True, False, False]]))
    assert torch.equal(expand(values, mask), torch.where(mask, x, torch.zeros_like(x)))


def test_gae_over_policy_tokens_skips_the_tool_results():
    """GAE across turns runs over the policy's own steps: the vectorised `gae` on the compacted steps equals
    `gae_loop` (which walks the mask's True positions) on the gapped mask; on the gapped layout it would not."""
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(2, 12, generator=g), torch.randn(2, 12, generator=g)
    mask = segment_mask(torch.tensor([[2, 3, 4, 3], [1, 5, 0, 0]]),
                        torch.tensor([[False, True, False, True], [False, True, False, False]]), 12)
    want = gae_loop(rewards, values, mask, gamma=1.0, lam=0.95)
    (r, packed), (v, _) = compact(rewards, mask), compact(values, mask)
    got = [expand(t, mask) for t in gae(r, v, packed, gamma=1.0, lam=0.95)]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    assert not torch.allclose(gae(rewards, values, mask, 1.0, 0.95)[0], want[0], atol=1e-3)


# ----------------------------------------------------------------------------------------------- episodes
def test_episode_masks_exactly_the_policy_tokens(tok, runner):
    gen = scripted(tok, [CALL, "The answer is 56088."])
    ep, = M.run_episodes([QUESTION], gen, tok, runner.registry, runner, max_turns=4)
    assert (ep.stop, ep.turns, ep.calls, ep.malformed, ep.answer, ep.has_eos) == (
        "answer", 2, 1, 0, "The answer is 56088.", True)
    assert [s.kind for s in ep.segments] == ["prompt", "policy", "context", "policy"]
    # the second turn was generated after the tool's result, rendered by the chat template
    assert gen.seen[1][0].endswith(f"{CALL}<|eos|>\n<|user|><tool_response>56088</tool_response><|end|><|assistant|>")
    assert ep.segments[2].text == "\n<|user|><tool_response>56088</tool_response><|end|><|assistant|>"
    batch = M.collate([ep], pad_id=tok.pad_token_id)
    ids, mask = batch["input_ids"][0], batch["policy_mask"][0]
    assert tok.decode(ids[mask]) == f"{CALL}<|eos|>The answer is 56088.<|eos|>"
    assert "56088</tool_response>" in tok.decode(ids[~mask])  # the tool's output is context, never trained on
    # the policy wrote what the template writes, so the whole episode is the template's text of its conversation
    assert tok.decode(ids) == TD.render_chat(tok, ep.messages, runner.registry.schemas()).removesuffix("\n")
    assert ep.messages[1]["tool_calls"][0]["function"] == {"name": "calculator",
                                                           "arguments": {"expression": "123 * 456"}}
    assert ep.messages[2] == {"role": "tool", "content": "56088", "name": "calculator"}


def test_malformed_calls_are_answered_and_counted(tok, runner):
    bad = ('<tool_call>{"name": "calculator", "arguments": {"expression": "1+"</tool_call>'  # bad JSON
           '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>'  # unknown tool
           '<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>'  # bad arguments
           '<tool_call>{"name": "explode", "arguments": {"message": "boom"}}</tool_call>')  # well-formed, raises
    gen = scripted(tok, [bad, "I could not compute it."])
    ep, = M.run_episodes(["What is 1 + 1?"], gen, tok, runner.registry, runner)
    assert (ep.calls, ep.malformed, ep.tool_errors, ep.stop) == (1, 3, 1, "answer")
    seen = gen.seen[1][0]
    assert "<tool_response>error: tool call is not valid JSON" in seen
    assert "<tool_response>error: unknown tool 'search'; available: calculator, explode</tool_response>" in seen
    assert "error: calculator is missing required argument(s) ['expression']" in seen
    assert "<tool_response>error: RuntimeError: boom</tool_response>" in seen
    assert ep.messages[1]["content"] == bad  # the raw turn stays in the transcript
    metrics = M.episode_metrics([ep])
    assert metrics["tools/malformed_call_rate"] == 0.75 and metrics["tools/calls_per_episode"] == 1.0
    assert metrics["tools/error_rate"] == 1.0 and metrics["tools/stop_answer"] == 1.0


def test_turn_and_token_budgets(tok, runner):
    ep, = M.run_episodes([QUESTION], scripted(tok, [CALL] * 3), tok, runner.registry, runner, max_turns=3)
    assert (ep.stop, ep.turns, ep.calls) == ("max_turns", 3, 2)  # the last turn's call is not run
    assert [s.kind for s in ep.segments] == ["prompt", "policy", "context", "policy", "context", "policy"]
    n_prompt = len(ep.segments[0].ids)
    ep, = M.run_episodes([QUESTION], scripted(tok, [CALL] * 3), tok, runner.registry, runner,
                         max_tokens=n_prompt + len(ep.segments[1].ids) + 5)
    assert (ep.stop, ep.turns, ep.calls) == ("budget", 1, 1)  # no room for the results and another turn
    assert ep.num_tokens <= n_prompt + len(ep.segments[1].ids) + 5
    ep, = M.run_episodes([QUESTION], scripted(tok, ["The answer is 56088."]), tok, runner.registry, runner,
                         max_new_tokens=3)
    assert (ep.stop, ep.has_eos, len(ep.segments[1].ids)) == ("length", False, 3)
    with pytest.raises(ValueError, match="prompt 0 is .* tokens: no room"):
        M.run_episodes([QUESTION], scripted(tok, [CALL]), tok, runner.registry, runner, max_tokens=10)


def test_turn_cut_after_its_call_is_closed_as_context(tok, runner):
    """A generator that stops at </tool_call> (a stop string) leaves the turn without EOS: the EOS that closes it is
    context (masked), the policy's tokens stay exactly what it produced."""
    gen = scripted(tok, [CALL, "The answer is 56088."], eos=False)
    ep, = M.run_episodes([QUESTION], gen, tok, runner.registry, runner)
    assert ep.segments[2].ids[0] == tok.eos_token_id and tok.eos_token_id not in ep.segments[1].ids
    assert ep.calls == 1 and ep.stop == "length"  # the final turn had no EOS either
    mask = M.collate([ep], tok.pad_token_id)["policy_mask"][0]
    assert tok.decode(torch.tensor(ep.input_ids)[mask]) == CALL + "The answer is 56088."


# ----------------------------------------------------------------------------------------------- with a model
def test_end_to_end_with_a_tiny_llama(tok, runner):
    model = models.build_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0).eval()
    scripts = [scripted(tok, [CALL, "The answer is 56088."]), scripted(tok, ["It is 56088."])]
    episodes = [M.run_episodes([QUESTION], g, tok, runner.registry, runner)[0] for g in scripts]
    batch = M.collate(episodes, tok.pad_token_id)
    ids, att, mask = batch["input_ids"], batch["attention"], batch["policy_mask"]
    assert ids.shape[0] == 2 and att[1].sum() == episodes[1].num_tokens < ids.shape[1]  # row 1 is right-padded
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            got = M.policy_logprobs(model, ids, att, mask, temperature)  # (B, T-1)
            # reference: the full logits of each episode alone (no padding), every position, then the policy's
            want = torch.zeros_like(got)
            for b, ep in enumerate(episodes):
                row = torch.tensor([ep.input_ids])
                logits = model(input_ids=row).logits[:, :-1]
                lp = token_logprobs(logits, row[:, 1:], temperature)[0]
                n = ep.num_tokens - 1
                want[b, :n] = torch.where(mask[b, 1:n + 1], lp, torch.zeros_like(lp))
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        assert (got[~mask[:, 1:]] == 0).all() and (got[mask[:, 1:]] < 0).all()
    assert int(mask.sum()) == sum(ep.policy_tokens for ep in episodes)


def test_sampler_drives_the_episode_loop(tok, runner):
    """The real KV-cache sampler as the policy: a random model rarely calls a tool, but every episode is well-formed:
    turns end at EOS or their limit, and the mask counts exactly the sampled tokens."""
    model = models.build_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=1).eval()
    gen = M.sampler(model, tok.eos_token_id, tok.pad_token_id, temperature=1.0,
                    generator=torch.Generator().manual_seed(0))
    episodes = M.run_episodes([QUESTION, "What is 2 + 2?"], gen, tok, runner.registry, runner, max_turns=2,
                              max_new_tokens=12)
    for ep in episodes:
        assert ep.stop in M.STOPS and 1 <= ep.turns <= 2
        assert all(len(s.ids) <= 12 for s in ep.segments if s.kind == M.POLICY)
    mask = M.collate(episodes, tok.pad_token_id)["policy_mask"]
    assert mask.sum(1).tolist() == [ep.policy_tokens for ep in episodes]
