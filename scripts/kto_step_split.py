"""Where a KTO benchmark step's forwards go: times each layout forward of `rlhfkit kto` on the benchmark workload
(bench-data/, 20 steps, batch 8, reference on the fly) by kind: reference, policy z0 pass (since session 11 a
continuation from the gradient forward's saved prompt keys and values, when the step is one micro-batch), policy
gradient forward. The backward and the update are the rest of the step.

Usage: python scripts/kto_step_split.py   (needs bench-data/ from ../shared/bench/make_tiny.py)
"""

import collections
import time

import torch

from rlhfkit.algorithms import dpo

if __name__ == "__main__":
    torch.set_num_threads(2)
    times = collections.defaultdict(list)  # kind -> [(seconds, tokens)]
    run_layout, continuation_logps = dpo.run_layout, dpo.continuation_logps

    def timed(module, lay, device, **kw):
        kind = ("reference (inference_mode)" if torch.is_inference_mode_enabled() else
                "policy gradient forward" if torch.is_grad_enabled() else "policy z0 pass (no_grad)")
        t = time.perf_counter()
        out = run_layout(module, lay, device, **kw)
        times[kind].append((time.perf_counter() - t, lay.tokens))
        return out

    def timed_continuation(model, saved_kv, lay, prompts, completions):
        t = time.perf_counter()
        out = continuation_logps(model, saved_kv, lay, prompts, completions)
        tokens = sum(len(c) for c in completions)  # the prompt's last token and the completion but its last
        times["policy z0 pass, continued"].append((time.perf_counter() - t, tokens))
        return out

    dpo.run_layout, dpo.continuation_logps = timed, timed_continuation
    cfg = dpo.Config(model="bench-data/small", data="bench-data/preference.jsonl", output_dir="/tmp/kto-split",
                     max_steps=20, seed=42, threads=2, micro_batch_size=8, max_length=256, loss=["kto"],
                     progress=False)
    t = time.perf_counter()
    dpo.train(cfg)
    print(f"train wall {time.perf_counter() - t:.1f}s")
    for kind, v in times.items():
        v = v[2:]  # the first two steps warm up
        print(f"{kind:28s} {sum(s for s, _ in v) / len(v) * 1e3:7.1f} ms per forward, "
              f"{sum(n for _, n in v) / len(v):6.0f} tokens")
