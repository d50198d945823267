"""The demo's tool-use stage (issue #31): from the demo's SFT model, three policies on the world's tool tasks.

    no_tool   the demo's SFT model, asked the tool tasks with no tools offered (it never saw them)
    tool_sft  that model fine-tuned (`rlhfkit sft`) in two steps: first on short copy drills (world.tool_tasks
              `ToolWorld.drills`: the operands, a place name and a tool's result copied, alone), then on
              demonstrations of calling the tool in TRL's tool-calling format (an assistant turn with `tool_calls`,
              the `tool` result, the answer; only the assistant's turns train) mixed with drills; a share of the
              demonstrations (`demo_skip`) answer with a guess instead, as hurried demonstrators do
    tool_rl   GRPO from tool_sft on rl-split tasks (places and operand pairs no SFT row holds, so the reward is for
              copying what the tools return, not for recalling a code a demonstration held), with the tools in the
              loop (multi-turn episodes: rollout.multiturn) and the world's trajectory reward (right answer,
              well-formed calls, no extra calls)

All three are evaluated on the same held-out tasks (places and operand pairs no training row holds), each in
multi-turn episodes at the sampling temperature: task success with a 95% Wilson interval, the malformed-call rate
(over every call the policy attempted), calls per episode, and one transcript each for the report. Files under
tool_use/: drills.jsonl, demos.jsonl, tool_sft_mix.jsonl (demos and drills, shuffled), rl_tasks.jsonl,
heldout_tasks.jsonl, table.json (the lookup tool's table), the tokenizer with the tool-rendering chat template, and
result.json; models in tool_drill/, tool_sft/ and tool_rl/.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Sizes per demo scale, kept here (not in demo.SCALES) so adding them changed no other stage's fingerprint.
# Why two tool-SFT steps (measurements: docs/benchmarks.md "Tool use (#31)"): tool demonstrations alone teach the
# call format but not the copies (operands and names from the prompt into the call, the tool's result into the
# answer): success 0/64. The demo's 1 M tied model has nearly collinear digit embeddings, and its hardest copies are
# between a digit with a leading space (the prompt's " 4") and the same digit without (the call's "4"). Drills with
# exactly those tokens (`ToolWorld.drills`) are learnt in ~900 steps of 64 rows and forgotten by 200 demo-only
# steps, so the demonstration step mixes in fresh drills; 800 mixed steps (4 epochs of 1,600 demos and drills) solve
# 0.14-0.72 of held-out tasks on seeds 0-3 with 3-digit factors and 0.79-0.85 with 2 (the world's default), 400 were
# not reliable (the stage's 800 demonstrations and 1,600 drills make 600). 30% of the demonstrations answer with a guess
# instead of calling the tool (`ToolWorld.demos` skip): demonstrators are imperfect, and an outcome reward is what lets
# RL do better than imitating them (Ouyang et al. 2022, sec. 1). With perfect demonstrations tool-SFT already does what
# this model can (0.79-0.85 held-out success with 1,600) and no GRPO recipe tried raised it: while rl tasks repeated
# their places GRPO learnt their codes, not the copy; with rl tasks that repeat nothing (`ToolWorld.tasks`) its reward
# stayed flat, and at lr 4e-4 without KL held-out success fell (0.791 -> 0.719). With 30% guesses, tool-SFT skips the
# tool about a third of the time and GRPO learns within ~20 steps to always call it; with 800 demonstrations instead of
# 1,600 its calls are also malformed more often (0.06-0.09), which GRPO lowers. The recipe keeps the policy near
# tool-SFT: KL 0.04, lr 2e-4, group-centred rewards without the std scaling (Dr. GRPO, Liu et al. 2025). With 64 or 200
# demonstrations tool-SFT's calls are malformed a fifth to half of the time and it solves almost nothing, nor does GRPO
# from it.
TOOL_SCALES: dict[str, dict[str, Any]] = {
    "default": dict(drill_rows=57600, drill_batch=64, n_rehearsal=1600, n_demos=800, demo_skip=0.3, n_rl_tasks=3200,
                    n_heldout=512, sft_epochs=4, sft_batch=16, sft_lr=3e-3, rl_steps=200, rl_prompts=16,
                    rl_generations=4, rl_lr=2e-4, rl_kl=0.04, rl_scale_rewards=False, max_turns=3,
                    max_new_tokens=80, max_tokens=256),
    "toy": dict(drill_rows=32, drill_batch=16, n_rehearsal=16, n_demos=32, demo_skip=0.3, n_rl_tasks=16, n_heldout=8,
                sft_epochs=1, sft_batch=8, sft_lr=2e-3, rl_steps=2, rl_prompts=2, rl_generations=2, rl_lr=1e-4,
                rl_kl=0.04, rl_scale_rewards=False, max_turns=2, max_new_tokens=24, max_tokens=200),
}
POLICIES = ("no_tool", "tool_sft", "tool_rl")
TEMPERATURE = 1.0  # evaluation samples as the demo's other evaluations do (and as RL samples)


def _tool_specs(table: str) -> list[str]:
    return ["calculator", f"lookup={table}"]


def write_data(out: Path, seed: int, s: dict) -> dict[str, str]:
    """The world's tool data for this seed: demonstrations, RL and held-out tasks, and the lookup table."""
    from rlhfkit import data as data_lib
    from rlhfkit.world.tool_tasks import ToolWorld

    world = ToolWorld(seed=seed)
    drills = world.drills(s["drill_rows"] + s["n_rehearsal"])
    demos = world.demos(s["n_demos"], skip=s["demo_skip"])
    mix = demos + drills[s["drill_rows"]:]  # rehearsal drills the first step did not see
    random.Random(f"tool-sft-mix:{seed}").shuffle(mix)
    paths = {"drills": data_lib.write_jsonl(drills[:s["drill_rows"]], out / "drills.jsonl"),
             "demos": data_lib.write_jsonl(demos, out / "demos.jsonl"),
             "mix": data_lib.write_jsonl(mix, out / "tool_sft_mix.jsonl"),
             "rl": data_lib.write_jsonl(world.tasks(s["n_rl_tasks"], "rl"), out / "rl_tasks.jsonl"),
             "heldout": data_lib.write_jsonl(world.tasks(s["n_heldout"], "heldout"), out / "heldout_tasks.jsonl")}
    (out / "table.json").write_text(json.dumps(world.table, indent=1))
    return {k: str(v) for k, v in paths.items()} | {"table": str(out / "table.json")}


def tool_tokenizer(model_dir: str, out: Path) -> str:
    """The model's tokenizer with the world's current chat template (which renders tools; a conversation without
    tools renders exactly as under the template it was saved with), saved under `out`."""
    from rlhfkit import models
    from rlhfkit.data import tools as tool_data
    from rlhfkit.data.tokenizer import CHAT_TEMPLATE
    from rlhfkit.world.tool_tasks import TOOL_SCHEMAS

    tok = models.load_tokenizer(model_dir)
    probe = [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7."}]
    before = tool_data.render_chat(tok, probe, add_generation_prompt=True)
    tok.chat_template = CHAT_TEMPLATE
    if tool_data.render_chat(tok, probe, add_generation_prompt=True) != before:
        raise ValueError(f"{model_dir}: its chat template is not the world's; the tool stage needs the world's")
    tool_data.check_template_renders_tools(tok, list(TOOL_SCHEMAS))
    tok.save_pretrained(out)
    return str(out)


def reward_fn(world):
    """The world's trajectory reward as a Python reward function f(prompt texts, final answers, episodes=...): the
    trainer's tool rollouts hand it the episodes (their call and malformed-call counts)."""

    def reward(prompts: list[str], responses: list[str], episodes: list | None = None) -> list[float]:
        calls = [e.calls for e in episodes] if episodes else None
        malformed = [e.malformed for e in episodes] if episodes else None
        return world.rewards(prompts, responses, calls, malformed)

    return reward


# ----------------------------------------------------------------------------------------------- evaluation
def run_policy(model, tok, tasks: list[dict], table: str, with_tools: bool, s: dict, seed: int) -> list:
    """One multi-turn episode per task, all in lock-step (diagnostics.tool_eval.sample_episodes), the tools
    (the calculator and a lookup over `table`) offered or not."""
    from rlhfkit.diagnostics.tool_eval import sample_episodes
    from rlhfkit.rollout.tools import ToolRunner, load_tools

    with ToolRunner(load_tools(_tool_specs(table) if with_tools else []), timeout_s=10) as runner:
        return sample_episodes(model, tok, [t["prompt"] for t in tasks], runner, max_turns=s["max_turns"],
                               max_tokens=s["max_tokens"], max_new_tokens=s["max_new_tokens"],
                               temperature=TEMPERATURE, seed=seed, batch_size=max(len(tasks), 1))


def score(world, tasks: list[dict], episodes: list) -> dict:
    """Success (95% Wilson interval) overall and per task kind, malformed-call rate, calls per episode and one
    transcript."""
    from rlhfkit.diagnostics.metrics import wilson_interval
    from rlhfkit.rollout.multiturn import episode_metrics

    wins = [world.success(t["prompt"][0]["content"], e.answer) for t, e in zip(tasks, episodes, strict=True)]
    n = len(wins)
    low, high = wilson_interval(sum(wins), n)
    m = episode_metrics(episodes)
    kinds = sorted({t["kind"] for t in tasks})
    by_kind = {k: sum(w for t, w in zip(tasks, wins) if t["kind"] == k) / sum(t["kind"] == k for t in tasks)
               for k in kinds}
    return {"success": {"mean": sum(wins) / max(n, 1), "low": round(low, 6), "high": round(high, 6), "n": n},
            "success_by_kind": by_kind,
            "malformed_call_rate": m["tools/malformed_call_rate"], "calls_per_episode": m["tools/calls_per_episode"],
            "turns": m["tools/turns"], "stops": {k.removeprefix("tools/stop_"): v for k, v in m.items()
                                                 if k.startswith("tools/stop_")},
            "transcript": {"messages": episodes[0].messages, "success": wins[0], "stop": episodes[0].stop,
                           "answer_expected": tasks[0]["answer"]}}


def evaluate(paths: dict[str, str], models_dirs: dict[str, str], tok_dir: str, s: dict, seed: int) -> dict:
    from rlhfkit import data as data_lib
    from rlhfkit import models
    from rlhfkit.world.tool_tasks import ToolWorld

    world = ToolWorld(seed=seed)
    tasks = data_lib.read_jsonl(paths["heldout"])
    tok = models.load_tokenizer(tok_dir)
    out = {}
    for name, model_dir in models_dirs.items():
        model = models.load_causal_lm(model_dir, tok).to(models.inference_device())
        episodes = run_policy(model, tok, tasks, paths["table"], name != "no_tool", s, seed)
        out[name] = score(world, tasks, episodes)
    return out


def rl_curve(run_dir: Path) -> dict:
    """The malformed-call rate, reward and calls per episode of the RL run (its metrics.jsonl), averaged over its
    first and its last tenth of steps (at least one each): a step's rate is over only rl_prompts x rl_generations
    episodes, too few to read a trend from two single steps."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    rows = [r for r in rows if "tools/malformed_call_rate" in r]
    if not rows:
        return {}
    w = max(1, len(rows) // 10)

    def window(part: list[dict]) -> dict:
        mean = lambda key: sum(r.get(key) or 0.0 for r in part) / len(part)  # noqa: E731
        return {"steps": [part[0].get("step"), part[-1].get("step")], "malformed_call_rate":
                mean("tools/malformed_call_rate"), "score": mean("rollout/score"),
                "calls_per_episode": mean("tools/calls_per_episode")}

    return {"first": window(rows[:w]), "last": window(rows[-w:]), "steps": len(rows), "window": w}


# ----------------------------------------------------------------------------------------------- the stage
def train_rl(common: dict, model_dir: str, paths: dict[str, str], s: dict, seed: int) -> None:
    """tool-RL: GRPO from `model_dir` on the rl-split tasks with the tools in the loop, rewarded by the world's
    trajectory reward. `common`: demo.Context.common's settings (output_dir, seed, threads, ...)."""
    from rlhfkit.algorithms import grpo
    from rlhfkit.world.tool_tasks import ToolWorld

    per_step = s["rl_prompts"] * s["rl_generations"]
    grpo.train(grpo.Config(**common, model=model_dir, data=paths["rl"], tools=_tool_specs(paths["table"]),
                           max_turns=s["max_turns"], max_episode_tokens=s["max_tokens"],
                           max_new_tokens=s["max_new_tokens"], num_generations=s["rl_generations"],
                           rollout_batch_size=s["rl_prompts"], num_minibatches=1, micro_batch_size=per_step,
                           max_steps=s["rl_steps"], learning_rate=s["rl_lr"], warmup_steps=0,
                           lr_scheduler="constant", kl_coef=s["rl_kl"], scale_rewards=s["rl_scale_rewards"],
                           temperature=TEMPERATURE),
               reward_fn=reward_fn(ToolWorld(seed=seed)))


def run(ctx) -> dict:
    """The tool_use stage: data, tool-SFT, tool-RL, evaluation of the three policies. `ctx` is demo.Context."""
    from rlhfkit.algorithms import sft
    from rlhfkit.world.tool_tasks import ToolWorld

    s, seed = TOOL_SCALES[ctx.cfg.scale], ctx.cfg.seed
    out = Path(ctx.path("tool_use"))
    out.mkdir(parents=True, exist_ok=True)
    paths = write_data(out, seed, s)
    tok_dir = tool_tokenizer(ctx.path("sft"), out / "tokenizer")
    # tool-SFT, step 1: the copies alone, in short rows (TOOL_SCALES: without them no held-out task is solved)
    sft.train(sft.Config(**ctx.common("tool_drill"), model=ctx.path("sft"), tokenizer=tok_dir, data=paths["drills"],
                         num_epochs=1, micro_batch_size=s["drill_batch"], learning_rate=s["sft_lr"],
                         warmup_steps=2, max_length=s["max_tokens"]))
    # step 2: the call format from demonstrations (assistant turns only train), drills mixed in so the copies stay
    sft.train(sft.Config(**ctx.common("tool_sft"), model=ctx.path("tool_drill"), tokenizer=tok_dir, data=paths["mix"],
                         num_epochs=s["sft_epochs"], micro_batch_size=s["sft_batch"], learning_rate=s["sft_lr"],
                         warmup_steps=2, max_length=s["max_tokens"]))
    train_rl(ctx.common("tool_rl"), ctx.path("tool_sft"), paths, s, seed)
    policies = evaluate(paths, {"no_tool": ctx.path("sft"), "tool_sft": ctx.path("tool_sft"),
                                "tool_rl": ctx.path("tool_rl")}, tok_dir, s, seed)
    result = {"policies": policies, "rl": rl_curve(Path(ctx.path("tool_rl"))), "n_demos": s["n_demos"],
              "demo_skip": s["demo_skip"],
              "n_heldout": s["n_heldout"], "temperature": TEMPERATURE, "max_turns": s["max_turns"],
              "digits": ToolWorld(seed=seed).digits}
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return {"tool_use": result}


def summary(stage: dict) -> dict:
    """summary.json's `tool_use`: per policy success {mean, low, high} and the malformed-call rate, the RL run's
    first and last malformed-call rates, and a transcript per policy (the report renders them as text)."""
    keys = ("success", "success_by_kind", "malformed_call_rate", "calls_per_episode", "turns", "stops", "transcript")
    settings = ("rl", "n_heldout", "n_demos", "demo_skip", "temperature", "max_turns", "digits")
    return {"policies": {name: {k: p.get(k) for k in keys} for name, p in stage["policies"].items()},
            **{k: stage.get(k) for k in settings}}
