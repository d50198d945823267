"""Where a trainer's GPU step goes: `python3 scripts/gpu/profile_step.py TRAINER BENCH-ARGS...` runs `rlhfkit bench`'s
training (e.g. 5 steps) under torch.profiler and prints the operators with the most CUDA time and the CPU time,
plus how much of the wall the GPU was busy."""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from rlhfkit.tools import bench

trainer, args = sys.argv[1], sys.argv[2:]
opts = bench._extra_options(args)
kw = {k: opts.pop(k) for k in ("model", "data", "reward_model") if k in opts}
steps, batch, max_length = int(opts.pop("steps", 5)), int(opts.pop("batch", 16)), int(opts.pop("max_length", 512))
opts.pop("threads", None)
bench.bench_trainer(trainer, kw["model"], kw["data"], 2, batch, max_length, 42, 8, "", kw.get("reward_model", ""),
                    dict(opts))  # warm-up run: kernels, allocator
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    r = bench.bench_trainer(trainer, kw["model"], kw["data"], steps, batch, max_length, 42, 8, "",
                            kw.get("reward_model", ""), dict(opts))
events = prof.key_averages()
gpu_us = sum(e.self_device_time_total for e in events)
print(f"{trainer}: wall {r['wall_s']} s for {steps} steps, steady {r['steady_step_s']} s; GPU busy "
      f"{gpu_us / 1e6:.3f} s ({gpu_us / 1e6 / r['wall_s']:.0%} of the loop, setup included in the trace)")
print(events.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))
