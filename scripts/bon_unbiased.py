"""Best-of-n gold on a finished demo run, two ways, from the same 16 samples per held-out prompt that stage_bon draws.

- first-n: the best of the first n samples by the proxy (what `rlhfkit demo` reports as bon_n);
- unbiased: the expected gold of the proxy's choice among n samples drawn without replacement from the 16, over
  all C(16, n) subsets (sort by proxy; the i-th best is chosen with probability C(16-1-i, n-1) / C(16, n)), as in
  Nakano et al. 2021 (WebGPT, appendix) and Gao et al. 2022. Lower variance for n < 16; identical at n = 16.

Usage: python scripts/bon_unbiased.py RUN_DIR   (prints one JSON line, appends it to exp/bon_unbiased.jsonl)
Session 6 used it on runs/s4-demo-0 and runs/s4-demo-3 (docs/benchmarks.md, the demo section).
"""
import json, sys, math, torch
from pathlib import Path
from rlhfkit import demo, models, data as data_lib
from rlhfkit.evaluate import sample_responses
from rlhfkit.rewards import load_reward
from rlhfkit.world import gold
run = Path(sys.argv[1]); pool = int(sys.argv[2]) if len(sys.argv) > 2 else 16
summary = json.loads((run / "summary.json").read_text())
seed = summary["seed"]
cfg = demo.Config(out=str(run), seed=seed, scale=summary["config"]["scale"])
ctx = demo.Context(cfg); s = ctx.s
torch.set_num_threads(2)
tok = models.load_tokenizer(str(run / "sft")); sft = models.load_causal_lm(str(run / "sft"), tok)
prompts = data_lib.read_jsonl(run / "world" / "heldout_prompts.jsonl")
rows = [r for r in prompts for _ in range(pool)]
torch.manual_seed(seed)
_, r_ids, _, texts = sample_responses(sft, tok, [r["prompt"] for r in rows], s["max_new_tokens"], 1.0, seed + 7, 64)
proxy = load_reward(str(run / "rm"))
P = len(prompts)
scores = proxy([r["prompt"] for r in rows], texts)["score"].view(P, pool)
ptexts = [data_lib.prompt_text(r["prompt"]) for r in rows]
g = torch.tensor([gold(pt, t)["total"] for pt, t in zip(ptexts, texts)]).view(P, pool)
out = {"run": str(run), "pool": pool, "first_n": {}, "unbiased": {}}
for n in range(1, pool + 1):
    best = scores[:, :n].argmax(1)
    out["first_n"][n] = g[torch.arange(P), best].mean().item()
    order = scores.argsort(1, descending=True)
    gs = g.gather(1, order)  # gold sorted by proxy, best first
    w = torch.tensor([math.comb(pool - 1 - i, n - 1) / math.comb(pool, n) for i in range(pool)], dtype=torch.float64)
    out["unbiased"][n] = (gs.double() * w).sum(1).mean().item()
    out.setdefault("unbiased_se", {})[n] = ((gs.double() * w).sum(1).std() / math.sqrt(P)).item()
print(json.dumps(out))
Path("exp").mkdir(exist_ok=True)
with open("exp/bon_unbiased.jsonl", "a") as f: f.write(json.dumps(out) + "\n")
