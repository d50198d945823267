"""What the online trainers (ppo.py, grpo.py) share: their config, set-up, the rollout call, the monitor and early
stop, and the final save. Each trainer's loop stays in its own file; these are the steps that read the same in
both. Sampling and scoring themselves live in rlhfkit.rollout (episodes.py, score.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.data import tools as tool_data
from rlhfkit.engine import TrainConfig, seed_everything, setup_distributed
from rlhfkit.math.losses import AGGREGATIONS
from rlhfkit.rollout.episodes import Rollout, encode_prompts, rollout, tool_rollout
from rlhfkit.rollout.multiturn import episode_metrics
from rlhfkit.rollout.score import RewardFn, as_reward_fn


# ----------------------------------------------------------------------------------------------- config
@dataclass
class OnlineConfig(TrainConfig, config_lib.DeprecatedFields):
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

    monitor_patience: int = 3
    """Early stop after this many monitor evaluations without a new best held-out score (gold, else proxy)."""
    tools: list[str] = field(default_factory=list)
    """Tools for multi-turn tool-use rollouts, comma-separated: calculator, lookup=TABLE (.json or .jsonl), or
    package.module:function (type hints and a docstring). Empty: single-turn rollouts. With tools every rollout is
    an episode (rollout.multiturn): the policy's turns are trained on, the tool results are context only."""
    max_turns: int = 4
    """Assistant turns per tool episode (the last one's calls are not run)."""
    max_episode_tokens: int = 512
    """Token budget of a whole tool episode: prompt, turns and tool results (each turn at most max_new_tokens)."""
    tool_timeout_s: float = 5.0
    """Seconds one tool call may run before its worker is killed (the model reads an error)."""

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
        if self.monitor_patience < 1:
            raise ValueError(f"monitor_patience must be >= 1, got {self.monitor_patience}")
        if self.tools and (self.max_turns < 1 or self.max_episode_tokens <= self.max_new_tokens
                           or self.tool_timeout_s <= 0):
            raise ValueError(f"with tools: max_turns must be >= 1, max_episode_tokens ({self.max_episode_tokens}) "
                             f"> max_new_tokens ({self.max_new_tokens}) and tool_timeout_s > 0")
        if self.tools and self.monitor_prompts and self.monitor_every > 0:
            raise ValueError("the over-optimisation monitor samples single-turn responses and scores them without "
                             "episodes; it does not run with tools (unset monitor_prompts or monitor_every)")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_model):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.reward_model)} reward sources")
        check_batch(self.rollout_batch_size * completions_per_prompt, self.num_minibatches, self.micro_batch_size,
                    self.gradient_accumulation_steps, int(os.environ.get("WORLD_SIZE", "1")))

    def monitor_config(self) -> "MonitorConfig":
        """The over-optimisation monitor's settings (diagnostics.monitor.MonitorConfig) from these fields."""
        from rlhfkit.diagnostics.monitor import MonitorConfig

        return MonitorConfig(prompts=self.monitor_prompts, every=self.monitor_every, gold=self.monitor_gold,
                             n=self.monitor_n, max_new_tokens=self.monitor_max_new_tokens or self.max_new_tokens,
                             seed=self.seed, early_stop=self.early_stop, patience=self.monitor_patience,
                             resume=self.resume)


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




PROMPT_TYPES = (data_lib.DataType.PROMPT, data_lib.DataType.PROMPT_COMPLETION, data_lib.DataType.PREFERENCE,
                data_lib.DataType.UNPAIRED, data_lib.DataType.CANDIDATES)  # the types whose rows carry a `prompt`


def load_prompts(path: str, split: str = "train", column_map: dict | None = None, skip_invalid: bool = False) -> list[Any]:
    """The `prompt` of every row of a prompt file (other columns are ignored)."""
    return [r["prompt"] for r in load_prompt_rows(path, split, column_map, skip_invalid)]


def load_prompt_rows(path: str, split: str = "train", column_map: dict | None = None, skip_invalid: bool = False,
                     tools: bool = False) -> list[dict]:
    """The rows of a prompt file, each with a `prompt` (other columns kept: a tool reward reads `answer`). With
    `tools`, rows are read as tool-use rows (data.tools.load_tool_rows: JSON-string arguments decoded, the tool
    calls in prompts checked)."""
    load = tool_data.load_tool_rows if tools else data_lib.load_rows
    rows = load(path, split, column_map or {}, skip_invalid, expect=PROMPT_TYPES)
    if not rows or "prompt" not in rows[0]:
        raise data_lib.DataError(f"{path}: online RL needs rows with a `prompt` column")
    return rows


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


# ----------------------------------------------------------------------------------------------- set-up
@dataclass
class OnlineRun:
    """One online run's data, tokenizer and models (set_up), then its reward and monitor (start); the steps
    below read and update it."""

    cfg: OnlineConfig
    name: str  # the stage: ppo, grpo, rloo or reinforce_pp (metrics' batch info, messages, rlhfkit.json)
    dist: Any  # engine.setup_distributed()
    prompts: list[Any]
    encoded: list[list[int]]  # the prompts' token ids, cut from the left to max_prompt_length
    counter: dict  # truncation counts
    tokenizer: Any
    policy: torch.nn.Module
    ref: torch.nn.Module | None
    reward: RewardFn | None = None
    monitor: Any = None  # diagnostics.monitor.Monitor on the main process when configured
    last_entropy: float | None = None  # the latest policy/entropy, handed to the monitor
    t0: float = 0.0
    rows: list[dict] | None = None  # with tools: the prompt file's rows (handed to the reward, e.g. its `answer`)
    runner: Any = None  # rollout.tools.ToolRunner when cfg.tools (its registry names the tools)

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def set_up(cfg: OnlineConfig, name: str, *, with_ref: bool = True,
           before_lora: Callable | None = None) -> tuple[OnlineRun, Any]:
    """Validate, seed, read the prompts (bad data fails before any model loads), load the tokenizer, the policy
    (LoRA applied) and the frozen reference. before_lora(policy, tokenizer) runs on the policy before its adapters
    (PPO's critic); its result is returned alongside."""
    cfg.validate()
    seed_everything(cfg.seed)
    dist = setup_distributed()
    rows = load_prompt_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid, tools=bool(cfg.tools))
    prompts = [r["prompt"] for r in rows]
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    runner = tool_runner(cfg, tokenizer, prompts) if cfg.tools else None
    models.check_quantization(cfg.load_in_4bit)
    policy = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code, load_in_4bit=cfg.load_in_4bit)
    extra = before_lora(policy, tokenizer) if before_lora is not None else None
    policy = models.apply_lora(policy, cfg, cfg.model)
    ref = None
    if with_ref:
        # The reference is the INITIAL policy (copied before a resume loads trained weights; under LoRA the policy
        # itself with its adapters off) or ref_model; frozen.
        ref = models.reference_policy(policy, cfg.ref_model, tokenizer, cfg.trust_remote_code)
        if ref is not policy:
            ref.to(dist.device)
    counter: dict = {}
    # tool episodes render their prompts with the tool schemas themselves (multiturn.run_episodes)
    encoded = [] if cfg.tools else encode_prompts(tokenizer, prompts, cfg.max_prompt_length, counter)
    return OnlineRun(cfg, name, dist, prompts, encoded, counter, tokenizer, policy, ref,
                     rows=rows if cfg.tools else None, runner=runner), extra


def tool_runner(cfg: OnlineConfig, tokenizer, prompts: list[Any]):
    """The tools of cfg.tools in a worker process (rollout.tools.ToolRunner; started on the first call), after
    checking what would otherwise fail mid-run: the chat template renders tools, and every prompt rendered with
    the tool schemas leaves room to generate under max_episode_tokens."""
    from rlhfkit.rollout.tools import ToolRunner, load_tools

    registry = load_tools(cfg.tools)
    schemas = registry.schemas()
    tool_data.check_template_renders_tools(tokenizer, schemas)
    long = [i for i, p in enumerate(prompts)
            if len(tool_data.encode_tool_prompt(tokenizer, p, schemas)) >= cfg.max_episode_tokens]
    if long:
        raise data_lib.DataError(f"{cfg.data}: {len(long)} prompt(s) (rows {long[:5]}...) are at least "
                                 f"max_episode_tokens={cfg.max_episode_tokens} tokens with the tool schemas; "
                                 "raise max_episode_tokens or shorten them")
    return ToolRunner(registry, timeout_s=cfg.tool_timeout_s)


def start(run: OnlineRun, engine, reward_fn: Callable | None) -> None:
    """Once the Engine exists: the reward (a Python reward_fn wins over cfg.reward_model), the monitor on the main
    process, config.yaml and the truncation counts."""
    cfg = run.cfg
    run.reward = as_reward_fn(reward_fn, cfg.reward_model, cfg.reward_weights or None, engine.dist.device,
                              cfg.reward_batch_size)
    if run.dist.is_main and cfg.monitor_prompts and cfg.monitor_every > 0:
        from rlhfkit.diagnostics.monitor import Monitor

        run.monitor = Monitor.from_config(cfg.monitor_config(), run.tokenizer, run.out, proxy=run.reward,
                                          ref_model=run.ref)
    if run.dist.is_main:
        config_lib.save(cfg, run.out / "config.yaml")
        if run.counter:
            print(f"{run.name}: truncation counts {run.counter}")
    run.t0 = time.perf_counter()


# ----------------------------------------------------------------------------------------------- the loop's steps
def sample(run: OnlineRun, engine, policy: torch.nn.Module, idx: list[int], generator: torch.Generator,
           **kwargs) -> Rollout:
    """Rollout (rollout.episodes.rollout) of the prompts `idx`: sampled, scored, log-probs at the sampling
    temperature in micro-batch-sized chunks under the engine's autocast; counted by the engine."""
    cfg, tok = run.cfg, run.tokenizer
    if run.runner is not None:  # multi-turn tool episodes; the response mask is the policy's tokens only
        kwargs.pop("share_prompt", None)  # an episode is not one prompt + one completion: padded rows
        ro = tool_rollout(policy, [run.prompts[i] for i in idx], run.reward, tokenizer=tok, runner=run.runner,
                          rows=[run.rows[i] for i in idx], max_turns=cfg.max_turns,
                          max_tokens=cfg.max_episode_tokens, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator,
                          forward_batch_size=cfg.micro_batch_size, ref_policy=run.ref, autocast=engine.autocast,
                          **kwargs)
        engine.count(gen_tokens=int(ro.lengths.sum()), gen_s=ro.gen_s)
        return ro
    ro = rollout(policy, [run.encoded[i] for i in idx], [run.prompts[i] for i in idx], run.reward,
                 eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, decode=run.decode,
                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                 generator=generator, forward_batch_size=cfg.micro_batch_size, ref_policy=run.ref,
                 autocast=engine.autocast, **kwargs)
    engine.count(gen_tokens=int(ro.lengths.sum()), gen_s=ro.gen_s)
    return ro


def rollout_metrics(ro: Rollout, first: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """A rollout's metrics, averaged over processes: its mean score, the trainer's `first` numbers, length, EOS
    fraction, the trainer's `last` numbers, and the reward's extra outputs (ensemble std, components)."""
    return mean_over_ranks({
        "rollout/score": ro.scores.mean().item(), **first,
        "rollout/length": ro.lengths.float().mean().item(),
        "rollout/eos_fraction": ro.has_eos.float().mean().item(), **last,
        **{f"rollout/{k}": v.float().mean().item() for k, v in ro.reward_parts.items() if v.dim() <= 1},
        **(episode_metrics(ro.episodes) if ro.episodes is not None else {})})  # tools/...: calls, malformed, stops


def watch(run: OnlineRun, step: int, policy: torch.nn.Module, metrics: dict[str, float]) -> None:
    """The over-optimisation monitor, when due: its numbers join this step's metrics, and run_dir/best/ is written
    on a new best held-out score."""
    if run.monitor is not None and run.monitor.due(step):
        metrics.update(run.monitor.run(step, policy, entropy=run.last_entropy))
        run.monitor.save_best(policy, run.tokenizer)


def end_step(run: OnlineRun, engine, metrics: dict[str, float], stats: dict[str, float], batch_info: str) -> bool:
    """One optimizer step and its log line; `stats` are this process's weighted sums over its micro-batches,
    summed here over processes. True when the monitor asks for an early stop."""
    metrics.update({key: v * run.dist.world_size for key, v in mean_over_ranks(stats).items()})
    metrics["train/elapsed_s"] = time.perf_counter() - run.t0
    run.last_entropy = metrics["policy/entropy"]
    engine.step(metrics, batch_info=batch_info)
    # every process stops together (the monitor runs on the main process only)
    if mean_over_ranks({"stop": float(run.monitor is not None and run.monitor.should_stop)})["stop"] > 0:
        print(f"{run.name}: early stop at step {engine.step_count} (no held-out improvement)")
        return True
    return False


def finish(run: OnlineRun, engine, policy: torch.nn.Module, **metadata) -> Path:
    """Close the engine (and the tool worker) and save the final policy (main process) with its rlhfkit.json
    metadata."""
    engine.close()
    if run.runner is not None:
        run.runner.close()
    if run.dist.is_main:
        models.save(policy, run.tokenizer, run.out, merge=run.cfg.merge,
                    metadata={"stage": run.name, "steps": engine.step_count, **metadata, "truncation": run.counter,
                              "skipped_steps": engine.skipped_steps})
    return run.out
