"""Where a DPO benchmark step's time goes: the benchmark's workload (bench-data/, 20 steps, batch 8, reference on
the fly) under the torch profiler, ops sorted by self time.

Usage: python scripts/profile_dpo.py   (needs bench-data/ from ../shared/bench/make_tiny.py; see docs/dpo.md)
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from rlhfkit.algorithms import dpo

if __name__ == "__main__":
    torch.set_num_threads(2)
    cfg = dpo.Config(model="bench-data/small", data="bench-data/preference.jsonl", output_dir="/tmp/dpo-profile",
                     max_steps=20, seed=42, threads=2, micro_batch_size=8, max_length=256, loss=["sigmoid"],
                     progress=False)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        dpo.train(cfg)
    print(f"total {time.perf_counter() - t:.1f}s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
