"""Where a KTO benchmark step's forwards go: times each layout forward of `rlhfkit kto` on the benchmark workload
(bench-data/, 20 steps, batch 8, reference on the fly) by kind: reference, policy z0 pass, policy gradient forward.

Usage: python scripts/kto_step_split.py   (needs bench-data/ from ../shared/bench/make_tiny.py)
"""
import time, torch, collections
from rlhfkit import dpo
torch.set_num_threads(2)
T=collections.defaultdict(list); orig=dpo.run_layout
def timed(module, lay, device):
    k = "ref(inference)" if torch.is_inference_mode_enabled() else ("policy grad fwd" if torch.is_grad_enabled() else "policy z0 (no_grad)")
    t=time.perf_counter(); out=orig(module, lay, device); T[k].append((time.perf_counter()-t, lay.tokens)); return out
dpo.run_layout=timed
cfg=dpo.Config(model="bench-data/small", data="bench-data/preference.jsonl", output_dir="/tmp/kto-t", max_steps=20, seed=42,
               threads=2, micro_batch_size=8, max_length=256, loss=["kto"], progress=False)
t=time.perf_counter(); dpo.train(cfg); w=time.perf_counter()-t
for k,v in T.items():
    v=v[2:]; print(f"{k:22s} {sum(a for a,_ in v)/len(v)*1e3:7.1f} ms/call  {sum(b for _,b in v)/len(v):6.0f} tokens/call")
print(f"train wall {w:.1f}s")
