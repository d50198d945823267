"""`rlhfkit bench TRAINER`: run the real trainer on a workload and print one JSON line of throughput.

    rlhfkit bench sft --model bench-data/small --data bench-data/sft.jsonl --steps 20 --batch 8
    rlhfkit bench dpo --model bench-data/small --data bench-data/preference.jsonl --loss sigmoid

Semantics match ../shared/bench/trl_bench.py (BENCHMARKS.md) so a line of each can be divided: fp32, `wall_s`
covers the training loop only (model loading and tokenisation excluded), samples are sequences (sft), pairs
(rm, dpo), unpaired examples (kto) or completions (online RL); tokens are non-pad tokens reaching the model;
`peak_rss_mib` is this process's ru_maxrss. Any other `--option value` is passed to the trainer's Config.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click


# trainer -> (module, entry, sample unit, fixed config overrides)
TRAINERS: dict[str, tuple[str, str, str, dict]] = {
    "sft": ("rlhfkit.algorithms.sft", "train", "sequence", {}),
    "rm": ("rlhfkit.algorithms.rm", "train", "pair", {}),
    "dpo": ("rlhfkit.algorithms.dpo", "train", "pair", {}),
    "kto": ("rlhfkit.algorithms.dpo", "train", "unpaired example", {"loss": "kto"}),
    "ppo": ("rlhfkit.algorithms.ppo", "train", "completion", {}),
    "grpo": ("rlhfkit.algorithms.grpo", "train", "completion", {}),
    "rloo": ("rlhfkit.algorithms.grpo", "train_rloo", "completion", {}),
}


ONLINE = ("ppo", "grpo", "rloo")  # their tokens mix generated and trained ones: no steady training MFU


class Throughput:
    """An Engine's observer (`with engine.observed(Throughput): train(cfg)`) that counts its run and writes the
    counts to the run directory as timing.json, which `bench_trainer` reads: samples and non-pad tokens that reach
    the loss, generated tokens and generation seconds for online trainers (`engine.count`), each optimizer step's
    seconds and the cumulative tokens at its end, the last step's loss, and the training loop's wall time (model
    loading and the final save excluded)."""

    def __init__(self, engine):
        self.run_dir, self.is_main = engine.run_dir, engine.dist.is_main
        n_params = sum(p.numel() for p in {id(p): p for p in engine.module.parameters()}.values())
        self.timing: dict[str, Any] = {"samples": 0, "tokens": 0, "gen_tokens": 0, "gen_s": 0.0, "step_s": [],
                                       "step_tokens": [], "n_params": n_params}
        self.t_start: float | None = None
        self.t_end: float | None = None

    def start(self, now: float) -> None:
        self.t_start = now

    def end(self, now: float) -> None:
        self.t_end = now

    def count(self, samples: int = 0, tokens: int = 0, gen_tokens: int = 0, gen_s: float = 0.0) -> None:
        t = self.timing
        t["samples"] += samples
        t["tokens"] += tokens
        t["gen_tokens"] += gen_tokens
        t["gen_s"] += gen_s

    def step(self, seconds: float, metrics: dict[str, Any]) -> None:
        from rlhfkit.engine.logs import plain

        t = self.timing
        t["step_s"].append(seconds)
        t["step_tokens"].append(t["tokens"] + t["gen_tokens"])  # cumulative: mfu_steady differences them
        t["final_loss"] = plain(metrics.get("train/loss", float("nan")))

    def close(self) -> None:
        """timing.json, on the main process, once the training loop has started."""
        if self.t_start is None or not self.is_main:
            return
        t = dict(self.timing)
        t["loop_s"] = (self.t_end or time.perf_counter()) - self.t_start
        t["steps_run"] = len(t["step_s"])
        (self.run_dir / "timing.json").write_text(json.dumps(t))


def _extra_options(args: list[str]) -> dict[str, str]:
    """`--key value` / `--flag` / `--no-flag` pairs -> {key: value} for the trainer's Config."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise click.UsageError(f"unexpected argument {a!r} (trainer options are --name value)")
        key = a[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            val = args[i + 1]
            i += 2
        else:
            val = "false" if key.startswith("no-") else "true"
            key = key[3:] if key.startswith("no-") else key
            i += 1
        out[key.replace("-", "_")] = val
    return out


def matmul_peak_flops(device) -> float:
    """The device's bf16 matmul rate, measured now (an 8192^3 product, 10 timed after 3 warm-ups): the peak that
    `mfu` is a fraction of, so it reflects this device's clocks and power cap, not a datasheet."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (start.elapsed_time(end) / 1e3)


def bench_trainer(trainer: str, model: str, data: str, steps: int = 20, batch: int = 8, max_length: int = 256,
                  seed: int = 42, threads: int = 2, ref_model: str = "", reward_model: str = "",
                  extra: dict | None = None) -> dict:
    """Run one benchmark in this process and return its result dict."""
    import torch

    from rlhfkit import config as config_lib
    from rlhfkit.engine import observed

    torch.set_num_threads(threads)
    module_name, entry, unit, fixed = TRAINERS[trainer]
    module = importlib.import_module(module_name)
    out_dir = tempfile.mkdtemp(prefix=f"rlhfkit-bench-{trainer}-")
    fields = {f for f in module.Config.__dataclass_fields__}
    overrides: dict = {"output_dir": out_dir, "max_steps": steps, "seed": seed, "threads": threads, "progress": False,
                       "model": model, "data": data, **fixed}
    # The batch is `batch` samples per optimizer step; online trainers say how that maps onto their fields.
    overrides.update(getattr(module, "bench_batch_overrides", lambda b: {"micro_batch_size": b,
                                                                         "gradient_accumulation_steps": 1})(batch))
    if "max_length" in fields:
        overrides["max_length"] = max_length
    if ref_model:
        overrides["ref_model"] = ref_model
    if reward_model:
        overrides["reward_model"] = reward_model
    overrides.update(extra or {})
    cfg = config_lib.resolve(module.Config, None, {k: v for k, v in overrides.items() if k in fields or k in (extra or {})})
    with observed(Throughput):  # every engine the trainer builds writes timing.json into its run directory
        getattr(module, entry)(cfg)
    t = json.loads((Path(out_dir) / "timing.json").read_text())
    wall = t["loop_s"]
    steady = statistics.mean(t["step_s"][1:]) if len(t["step_s"]) > 1 else None
    n_params = t.get("n_params", 0)
    flops = 6 * n_params * t["tokens"] + 2 * n_params * t["gen_tokens"]
    import transformers

    gpu = {}
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20  # before the matmul probe allocates its own
        peak = matmul_peak_flops(torch.device("cuda"))
        # steady: the steps after the first (which pays for lazy kernel set-up and allocator growth)
        cum, steps = t.get("step_tokens", []), t["step_s"]
        steady_flops = None
        if len(cum) > 1 and trainer not in ONLINE:
            steady_flops = 6 * n_params * (cum[-1] - cum[0]) / sum(steps[1:])
        gpu = {"peak_gpu_mib": round(peak_mib, 1),
               "matmul_peak_tflops": round(peak / 1e12, 1), "mfu": round(flops / wall / peak, 4),
               "mfu_steady": round(steady_flops / peak, 4) if steady_flops else None,
               "device": torch.cuda.get_device_name()}

    return {
        "lib": "rlhfkit", "trainer": trainer, "model": model, "data": data, "n_params": n_params,
        "steps": t["steps_run"], "batch": batch, "max_length": max_length, "seed": seed, "threads": threads,
        "sample_unit": unit, "samples": t["samples"], "tokens": t["tokens"], "gen_tokens": t["gen_tokens"] or None,
        "wall_s": round(wall, 3), "samples_per_s": round(t["samples"] / wall, 3),
        "tokens_per_s": round(t["tokens"] / wall, 1),
        "gen_tokens_per_s": round(t["gen_tokens"] / wall, 1) if t["gen_tokens"] else None,
        "gen_s": round(t["gen_s"], 3) if t["gen_tokens"] else None,
        "steady_step_s": round(steady, 4) if steady else None,
        "final_loss": t.get("final_loss"),
        "model_flops_per_s": round(flops / wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # on a GPU the model lives in device memory, which RSS does not see
        "peak_gpu_mib": None, **gpu,
        "extra": {k: v for k, v in overrides.items() if k not in ("output_dir", "progress")},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("trainer", type=click.Choice(list(TRAINERS)))
@click.option("--model", required=True, help="Policy model directory (or the reward model's backbone for rm).")
@click.option("--data", required=True, help="Workload data file.")
@click.option("--ref-model", default="", help="Reference model (default: the policy's initial weights).")
@click.option("--reward-model", default="", help="Reward model for online trainers.")
@click.option("--steps", default=20, show_default=True, help="Optimizer steps.")
@click.option("--batch", default=8, show_default=True, help="Samples per optimizer step.")
@click.option("--max-length", default=256, show_default=True, help="Maximum tokens per sequence.")
@click.option("--seed", default=42, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--results", default="", help="Also append the JSON line to this file.")
@click.pass_context
def command(ctx, trainer, model, data, ref_model, reward_model, steps, batch, max_length, seed, threads, results):
    """Benchmark TRAINER (sft, rm, dpo, kto, ppo, grpo, rloo); any other --option is passed to its config."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's messages: stdout is the one JSON line
        res = bench_trainer(trainer, model, data, steps, batch, max_length, seed, threads, ref_model, reward_model,
                            _extra_options(ctx.args))
    line = json.dumps(res)
    click.echo(line)
    if results:
        with open(results, "a") as f:
            f.write(line + "\n")
