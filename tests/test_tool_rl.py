"""GRPO / RLOO / PPO on multi-turn tool-use rollouts: the loss mask is exactly the policy's tokens across turns,
the tool results get no gradient (from the loss or the KL), the old log-probs are recomputed on exactly the sampled
tokens (ratio exactly 1 before the first update), tools/... metrics reach metrics.jsonl, and the reward sees the
episodes."""

from __future__ import annotations

import pytest
import torch

from conftest import write_jsonl
from tool_fixtures import tool_tokenizer
from rlhfkit import models
from rlhfkit.algorithms import grpo, ppo
from rlhfkit.engine import read_metrics
from rlhfkit.math.advantages import gae_loop
from rlhfkit.math.losses import ppo_policy_loss
from rlhfkit.models.logps import TokenLogprobs
from rlhfkit.rollout import multiturn as M
from rlhfkit.rollout.episodes import Rollout, episode_rollout
from rlhfkit.rollout.score import answer_correct, make_tool_reward, tool_reward

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "123 * 456"}}</tool_call>'
MALFORMED = '<tool_call>{"name": "calculator", "arguments": {"expr": "123 * 456"}}</tool_call>'  # wrong argument
RIGHT, WRONG = "The answer is 56088.", "The answer is 7."
QUESTION = [{"role": "user", "content": "What is 123 times 456?"}]


@pytest.fixture(scope="module")
def tool_dir(tmp_path_factory):
    """A tiny random Llama whose tokenizer's chat template renders tools, and a prompt file with answers."""
    d = tmp_path_factory.mktemp("tools")
    tok = tool_tokenizer()
    models.save(models.build_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0), tok, d / "model")
    write_jsonl(d / "prompts.jsonl", [{"prompt": QUESTION, "answer": "56088"}] * 8)
    return d


def scripted(tok):
    """A fake sampler for every episode of a rollout: row j of a turn calls the calculator (row j % 4 == 3: a
    malformed call, wrong argument name) when it has seen no tool result yet, else answers, right for even j and
    wrong for odd j (so the rewards of a group differ and every policy token has a non-zero advantage)."""
    def generate(prompt_ids, max_new_tokens):
        out = []
        for j, ids in enumerate(prompt_ids):
            after_tool = "<tool_response>" in tok.decode(ids)
            text = (RIGHT if j % 2 == 0 else WRONG) if after_tool else (MALFORMED if j % 4 == 3 else CALL)
            out.append(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        return out

    return generate


@pytest.fixture
def scripted_sampler(monkeypatch):
    monkeypatch.setattr(M, "sampler", lambda model, eos_id, pad_id, *a, **k: scripted(tool_tokenizer()))


@pytest.fixture
def grads(monkeypatch):
    """Every update forward's (input_ids, target mask, d loss / d token log-probs), recorded by a hook."""
    seen = []
    forward = TokenLogprobs.forward

    def recording(self, input_ids, attention_mask, target_mask, *a, **k):
        out = forward(self, input_ids, attention_mask, target_mask, *a, **k)
        if out["logprobs"].requires_grad:  # the update, not the rollout's inference-mode forwards
            entry = {"ids": input_ids.detach().clone(), "mask": target_mask.detach().clone()}
            out["logprobs"].register_hook(lambda g: entry.update(grad=g.detach().clone()))
            seen.append(entry)
        return out

    monkeypatch.setattr(TokenLogprobs, "forward", recording)
    return seen


def check_gradients_on_policy_tokens_only(seen, tok, first_step: int):
    """No update forward has a gradient off its mask; and in the first optimizer step (its `first_step`
    micro-batches: ratio 1, nothing clipped, every advantage non-zero) the tokens with a gradient are exactly the
    policy's: the call turn and the answer turn, each with its EOS; nothing of the tool result or the template."""
    assert seen and all("grad" in e for e in seen)
    for e in seen:
        assert not ((e["grad"] != 0) & ~e["mask"][:, 1:]).any()  # no gradient off the mask
    for e in seen[:first_step]:
        live = e["grad"] != 0  # (b, T-1)
        for ids, row in zip(e["ids"], live):
            text = tok.decode(ids[1:][row])
            assert text in (f"{CALL}<|eos|>{RIGHT}<|eos|>", f"{CALL}<|eos|>{WRONG}<|eos|>",
                            f"{MALFORMED}<|eos|>{RIGHT}<|eos|>", f"{MALFORMED}<|eos|>{WRONG}<|eos|>"), text
            assert "tool_response" not in text


# ----------------------------------------------------------------------------------------------- the mask
def test_loss_mask_covers_exactly_the_policy_tokens_across_turns():
    """A hand-built batch of two episodes (token ids arbitrary, EOS = 2, pad = 0):

        row 0: prompt [5, 6, 7] | policy [8, 9] | tool result [10, 11, 12] | policy [13, 2]      10 tokens
        row 1: prompt [5, 6]    | policy [14, 15, 2]                                              5 tokens, 5 pad

    The loss mask is (B, T-1) = (2, 9), aligned with input_ids[:, 1:] (position t predicts token t+1): row 0 counts
    the targets at t = 2, 3 (tokens 8, 9) and t = 7, 8 (tokens 13, 2) -- 4 tokens, none of 10, 11, 12; row 1 counts
    t = 1, 2, 3 (tokens 14, 15, 2). The log-probs are non-zero exactly there, and the GRPO loss (advantage +1 on
    row 0, -1 on row 1) has a gradient exactly there."""
    P, Pol, C = M.PROMPT, M.POLICY, M.CONTEXT
    episodes = [M.Episode([M.Segment(P, [5, 6, 7], ""), M.Segment(Pol, [8, 9], ""), M.Segment(C, [10, 11, 12], ""),
                           M.Segment(Pol, [13, 2], "")], [], answer="a", stop="answer", has_eos=True),
                M.Episode([M.Segment(P, [5, 6], ""), M.Segment(Pol, [14, 15, 2], "")], [], answer="b",
                          stop="length")]
    tok = tool_tokenizer()
    model = models.build_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    ro = episode_rollout(model, episodes, ["q", "q"], lambda prompts, answers: {"score": torch.tensor([1.0, 0.0])},
                         pad_id=0, ref_policy=model)
    want = torch.zeros(2, 9, dtype=torch.bool)
    want[0, [2, 3, 7, 8]] = True
    want[1, [1, 2, 3]] = True
    assert torch.equal(ro.mask, want)
    assert ro.input_ids[0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 2]
    assert ro.input_ids[1].tolist() == [5, 6, 14, 15, 2, 0, 0, 0, 0, 0]
    assert ro.lengths.tolist() == [4, 3] and ro.has_eos.tolist() == [True, False] and ro.texts == ["a", "b"]
    assert (ro.logprobs[want] < 0).all() and (ro.logprobs[~want] == 0).all()
    assert torch.equal(ro.ref_logprobs, ro.logprobs)  # the same model under the same mask and chunks
    lp = TokenLogprobs(model)(ro.input_ids, ro.attention, ro.response_mask)["logprobs"]
    assert torch.equal(lp.detach(), ro.logprobs)  # recomputed on exactly these tokens: ratio exactly 1
    loss, stats = ppo_policy_loss(lp, ro.logprobs, torch.tensor([1.0, -1.0]), ro.mask, 0.2, "token_mean")
    assert stats["ratio"] == 1.0
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.equal(g != 0, want)
    assert torch.allclose(g[want], torch.tensor([-1.0] * 4 + [1.0] * 3) / 7)  # -A / (7 policy tokens)


def test_ppo_gae_runs_over_the_policy_tokens_only():
    """ppo_advantages on a gapped mask equals the reference loop over the mask's True positions (gae_loop), which
    steps from the last token of one turn straight to the first of the next; the tool result gets nothing."""
    mask = torch.tensor([[False, True, True, False, False, True, True], [True, True, True, False, False, False, False]])
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 7, generator=g) * mask
    ro = Rollout(prompts=["q", "q"], texts=["a", "b"], input_ids=torch.zeros(2, 8, dtype=torch.long),
                 attention=torch.ones(2, 8, dtype=torch.bool),
                 response_mask=torch.cat([torch.zeros(2, 1, dtype=torch.bool), mask], 1),
                 logprobs=torch.randn(2, 7, generator=g) * mask, scores=torch.tensor([1.0, -0.5]),
                 has_eos=torch.tensor([True, True]), values=values, episodes=[None, None])
    ro.ref_logprobs = ro.logprobs + 0.1 * mask
    cfg = ppo.Config(gamma=0.9, lam=0.8, whiten_advantages=False, kl_coef=0.05)
    a = ppo.ppo_advantages(ro, 0.05, cfg)
    rewards = -0.05 * (ro.logprobs - ro.ref_logprobs) * mask
    rewards[0, 6] += 1.0
    rewards[1, 2] += -0.5
    want_adv, want_ret = gae_loop(rewards, values, mask, 0.9, 0.8)
    assert torch.allclose(a["advantages"], want_adv, atol=1e-6) and torch.allclose(a["returns"], want_ret, atol=1e-6)
    assert (a["advantages"][~mask] == 0).all()
    ro.episodes = None  # the single-turn path would treat the gap as the end of the episode: a different answer
    assert not torch.allclose(ppo.ppo_advantages(ro, 0.05, cfg)["advantages"], want_adv, atol=1e-3)


def test_overlong_penalty_measures_the_whole_episode():
    """With tools DAPO's overlong penalty reads the episode's whole length (prompt, turns, tool results) against
    max_episode_tokens: buffer 20 of 100, episodes of 70, 90 and 100 tokens -> 0, (80 - 90) / 20 = -0.5, -1."""
    cfg = grpo.Config(model="m", data="d", tools=["calculator"], max_episode_tokens=100, max_new_tokens=10,
                      overlong_buffer=20)
    attention = torch.arange(100)[None] < torch.tensor([[70], [90], [100]])
    response_mask = attention & (torch.arange(100)[None] >= 60)  # the policy's tokens: 10, 30, 40 of them
    ro = Rollout(prompts=["q"] * 3, texts=["a"] * 3, input_ids=torch.zeros(3, 100, dtype=torch.long),
                 attention=attention, response_mask=response_mask, logprobs=torch.zeros(3, 99),
                 scores=torch.tensor([1.0, 1.0, 1.0]), has_eos=torch.ones(3, dtype=torch.bool))
    assert grpo.shaped_scores(ro, cfg).tolist() == [1.0, 0.5, 0.0]
    cfg.tools, cfg.overlong_buffer = [], 5  # single-turn: 10, 30, 40 policy tokens vs max_new_tokens 10: -1 each
    assert grpo.shaped_scores(ro, cfg).tolist() == [0.0, 0.0, 0.0]


def test_concat_rollouts_keeps_the_episodes():
    """Dynamic sampling joins rows of several rollouts: the episodes follow their rows."""
    from rlhfkit.rollout.episodes import concat_rollouts

    tok = tool_tokenizer()
    model = models.build_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)

    def ro_of(lengths, answers):
        eps = [M.Episode([M.Segment(M.PROMPT, [5] * 2, ""), M.Segment(M.POLICY, [6] * n + [2], "")], [], answer=a,
                         stop="answer", has_eos=True) for n, a in zip(lengths, answers)]
        return episode_rollout(model, eps, ["q"] * len(eps), lambda p, r: {"score": torch.ones(len(r))}, pad_id=0)

    a, b = ro_of([1, 2], ["a0", "a1"]), ro_of([5], ["b0"])
    ro = concat_rollouts([(a, torch.tensor([1])), (b, torch.tensor([0]))], pad_id=0)
    assert [ep.answer for ep in ro.episodes] == ro.texts == ["a1", "b0"]
    assert ro.mask.sum(-1).tolist() == [3, 6]


# ----------------------------------------------------------------------------------------------- rewards
@pytest.mark.parametrize("text,expected,ok", [
    ("The answer is 56,088.", "56088", True), ("56088 or 7", "56088", False), ("It is 0.5", "1/2", True),
    ("no number", "3", False), ("The capital is Paris.", "paris", True), ("Lyon", "Paris", False)])
def test_answer_correct(text, expected, ok):
    assert answer_correct(text, expected) is ok


def test_tool_reward_composes_answer_and_calls():
    """Defaults: +1 for a right answer, -0.25 per malformed call, 0 per call: 1 - 0.25 = 0.75 for row 0, and with
    per_call = -0.1: 0 - 0.25 * 0 - 0.1 * 2 = -0.2 for row 1."""
    eps = [M.Episode([], [], calls=2, malformed=1), M.Episode([], [], calls=2, malformed=0)]
    rows = [{"answer": "56088"}, {"answer": "56088"}]
    out = tool_reward(["q", "q"], [RIGHT, WRONG], episodes=eps, rows=rows)
    assert out["score"].tolist() == [0.75, 0.0] and out["correct"].tolist() == [1.0, 0.0]
    assert make_tool_reward(per_call=-0.1)(["q"] * 2, [RIGHT, WRONG], episodes=eps, rows=rows)["score"].tolist() \
        == pytest.approx([0.55, -0.2])
    with pytest.raises(ValueError, match="`answer` column"):
        tool_reward(["q"], [RIGHT], episodes=eps[:1], rows=[{}])


# ----------------------------------------------------------------------------------------------- the trainers
def cfg_for(cls, tool_dir, out, **kw):
    base = dict(model=str(tool_dir / "model"), data=str(tool_dir / "prompts.jsonl"), output_dir=str(out),
                tools=["calculator"], max_turns=3, max_episode_tokens=640, max_new_tokens=48, max_steps=1,
                learning_rate=1e-2, progress=False, lr_scheduler="constant", threads=1,
                reward_model=["rlhfkit.rollout.score:tool_reward"])
    base.update(kw)
    return cls(**base)


@pytest.mark.parametrize("entry,cls,kw", [(grpo.train, grpo.Config, {}), (grpo.train_rloo, grpo.Config, {}),
                                           (grpo.reinforce_pp.train, grpo.reinforce_pp.Config, {"gamma": 0.9})],
                         ids=["grpo", "rloo", "reinforce_pp"])
def test_grpo_family_trains_on_policy_tokens_only(tool_dir, tmp_path, scripted_sampler, grads, entry, cls, kw):
    """Two passes over one rollout of 2 prompts x 4 episodes (num_iterations 2: the old log-probs are the
    rollout-time forward, recomputed on the assembled episodes), with the KL to the reference as a loss term (GRPO,
    RLOO) or in the per-token reward (REINFORCE++, its return discounted over the policy's own steps)."""
    tok = tool_tokenizer()
    entry(cfg_for(cls, tool_dir, tmp_path / "run", max_steps=2, num_iterations=2, rollout_batch_size=2,
                  num_generations=4, micro_batch_size=4, gradient_accumulation_steps=2, kl_coef=0.1, **kw))
    first, second = read_metrics(tmp_path / "run")
    # before any update the recomputed log-probs are those of the sampled tokens exactly
    assert first["policy/ratio"] == 1.0 and first["policy/clipfrac"] == 0.0 and first["kl/token"] == 0.0
    assert second["policy/ratio"] != 1.0  # the second pass sees the updated policy
    # per group: 3 good calls and 1 malformed; answers right, wrong, right, wrong (after the error message too)
    assert first["tools/malformed_call_rate"] == 0.25 and first["tools/calls_per_episode"] == 0.75
    assert first["tools/stop_answer"] == 1.0 and first["tools/turns"] == 2.0
    assert first["rollout/correct"] == 0.5 and first["rollout/score"] == pytest.approx((1 + 0 + 1 - 0.25) / 4)
    assert first["rollout/eos_fraction"] == 1.0
    check_gradients_on_policy_tokens_only(grads, tok, first_step=2)


def test_ppo_trains_on_policy_tokens_only(tool_dir, tmp_path, scripted_sampler, grads):
    tok = tool_tokenizer()
    ppo.train(cfg_for(ppo.Config, tool_dir, tmp_path / "run", max_steps=2, rollout_batch_size=4, num_minibatches=2,
                      micro_batch_size=2, gradient_accumulation_steps=1, ppo_epochs=1, kl_coef=0.05))
    first, second = read_metrics(tmp_path / "run")
    assert first["policy/ratio"] == 1.0 and first["policy/approx_kl"] == 0.0 and first["kl/seq"] == 0.0
    assert first["tools/malformed_call_rate"] == 0.25 and first["rollout/correct"] == 0.5
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in (first, second))
    check_gradients_on_policy_tokens_only(grads, tok, first_step=1)


def test_real_sampler_smoke_and_reward_sees_episodes(tool_dir, tmp_path):
    """The KV-cache sampler as the policy (a random model rarely calls a tool): the run completes, the tools/...
    metrics are logged, and a Python reward that asks for `episodes` and `rows` gets them."""
    seen = {}

    def reward(prompts, responses, *, episodes, rows):
        seen.update(n=len(episodes), answers=[r["answer"] for r in rows], stops={e.stop for e in episodes})
        return [float(e.policy_tokens) / 100 for e in episodes]

    grpo.train(cfg_for(grpo.Config, tool_dir, tmp_path / "run", max_new_tokens=8, max_turns=2, rollout_batch_size=2,
                       num_generations=2, micro_batch_size=4, gradient_accumulation_steps=1, kl_coef=0.0,
                       reward_model=[]), reward_fn=reward)
    m, = read_metrics(tmp_path / "run")
    assert seen["n"] == 4 and seen["answers"] == ["56088"] * 4 and seen["stops"] <= set(M.STOPS)
    assert "tools/malformed_call_rate" in m and "tools/stop_budget" in m and torch.isfinite(torch.tensor(m["train/loss"]))


def test_tool_options_are_validated(tool_dir, tmp_path):
    with pytest.raises(ValueError, match="max_episode_tokens"):
        cfg_for(grpo.Config, tool_dir, tmp_path, max_episode_tokens=32).validate()
    with pytest.raises(ValueError, match="max_turns"):
        cfg_for(grpo.Config, tool_dir, tmp_path, max_turns=0).validate()
    with pytest.raises(ValueError, match=r"overlong_buffer must be in \[0, max_episode_tokens=640\]"):
        cfg_for(grpo.Config, tool_dir, tmp_path, overlong_buffer=700).validate()
    cfg_for(grpo.Config, tool_dir, tmp_path, overlong_buffer=100).validate()  # > max_new_tokens is fine with tools
    with pytest.raises(ValueError, match="monitor .* does not run with tools"):
        cfg_for(ppo.Config, tool_dir, tmp_path, rollout_batch_size=2, micro_batch_size=1, monitor_prompts="p.jsonl",
                monitor_every=5).validate()


# ----------------------------------------------------------------------------------------------- rlhfkit eval
def test_eval_reports_tool_metrics_of_a_scripted_policy(tool_dir):
    """Four prompts, each answered by a scripted policy in a known way:

        case A: a good call, then the right answer        calls 1, malformed 0, solved
        case B: a malformed call, then a wrong answer     calls 0, malformed 1
        case C: the right answer at once, no call         calls 0, malformed 0, solved
        case D: a good call, then a wrong answer          calls 1, malformed 0

    tool_call_validity = 1 - 1 malformed / 3 attempted = 2/3; calls_per_episode = 2 / 4 = 0.5; task_success (the
    rows' `answer`) = 2 / 4 = 0.5; with a success function "right and used a tool": 1 / 4."""
    from rlhfkit.diagnostics.tool_eval import evaluate_tool_policy
    from rlhfkit.rollout.tools import ToolRunner, load_tools

    tok = models.load_tokenizer(str(tool_dir / "model"))
    model = models.load_causal_lm(str(tool_dir / "model"), tok)
    first = {"A": CALL, "B": MALFORMED, "C": RIGHT, "D": CALL}
    then = {"A": RIGHT, "B": WRONG, "D": WRONG}

    def generate(prompt_ids, max_new_tokens):
        out = []
        for ids in prompt_ids:
            text = tok.decode(ids)
            case = text.split("case ")[1][0]
            reply = then[case] if "<tool_response>" in text else first[case]
            out.append(tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        return out

    rows = [{"prompt": f"case {c}: what is 123 times 456?", "answer": "56088"} for c in "ABCD"]
    with ToolRunner(load_tools(["calculator"])) as runner:
        res = evaluate_tool_policy(model, tok, rows, runner, max_tokens=640, generate=generate, judges={})
        assert res["tool_call_validity"] == pytest.approx(2 / 3) and res["calls_per_episode"] == 0.5
        assert res["task_success"] == 0.5 and res["finished_rate"] == 1.0 and res["tools"]["turns"] == 1.75
        assert [s["episode"]["success"] for s in res["samples"]] == [1.0, 0.0, 1.0, 0.0]
        assert [s["response"] for s in res["samples"]] == [RIGHT, WRONG, RIGHT, WRONG]

        def right_with_a_tool(prompts, answers, *, episodes):
            return [float(answer_correct(a, "56088") and e.calls > 0) for a, e in zip(answers, episodes)]

        res = evaluate_tool_policy(model, tok, rows, runner, max_tokens=640, generate=generate, judges={},
                                   success=right_with_a_tool)
        assert res["task_success"] == 0.25
        res = evaluate_tool_policy(model, tok, [{"prompt": r["prompt"]} for r in rows], runner, max_tokens=640,
                                   generate=generate, judges={})
        assert "task_success" not in res  # no answers, no success function: not reported


def test_eval_command_with_tools(tool_dir, tmp_path):
    """`rlhfkit eval --tools ...` on a model directory: the tool metrics are in eval.json, with the KL to the
    reference summed over the policy's tokens (0: the reference is the policy itself)."""
    import json

    from rlhfkit.cli.main import main

    out = tmp_path / "eval.json"
    main(["eval", "--policies", f"p={tool_dir / 'model'}", "--prompts", str(tool_dir / "prompts.jsonl"),
          "--tools", "calculator", "--max-turns", "2", "--max-new-tokens", "8", "--max-episode-tokens", "640",
          "--limit", "4", "--ref-model", str(tool_dir / "model"), "--output", str(out)])
    res = json.loads(out.read_text())["policies"]["p"]
    assert 0 <= res["tool_call_validity"] <= 1 and res["calls_per_episode"] >= 0 and "task_success" in res
    assert res["kl_to_ref"] == pytest.approx(0.0, abs=1e-6) and res["n"] == 4


def test_tool_run_resumes_exactly(tool_dir, tmp_path):
    """The episodes of an iteration come from (seed, iteration, rank) alone and the tools are deterministic, so a run
    resumed from its step-1 checkpoint samples the same episodes and logs the same step 2 as the run it continues."""
    import shutil

    kw = dict(max_new_tokens=8, max_turns=2, rollout_batch_size=2, num_generations=2, micro_batch_size=4,
              gradient_accumulation_steps=1, kl_coef=0.05, temperature=0.9, max_steps=2, save_every=1)
    def reward(prompts, responses, *, episodes):  # depends on every sampled token, so a different draw shows
        return [sum(t for s in e.segments if s.kind == M.POLICY for t in s.ids) % 7 / 7 + e.calls for e in episodes]

    grpo.train(cfg_for(grpo.Config, tool_dir, tmp_path / "full", reward_model=[], **kw), reward_fn=reward)
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000001", part / "checkpoints" / "step-00000001")
    grpo.train(cfg_for(grpo.Config, tool_dir, part, reward_model=[], resume=True, **kw), reward_fn=reward)
    full, resumed = read_metrics(tmp_path / "full")[1], read_metrics(part)[0]
    assert resumed["step"] == 2 and full["train/loss"] != 0.0
    for key in ("train/loss", "rollout/score", "tools/policy_tokens", "tools/turns", "kl/token"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6, abs=1e-9), key
