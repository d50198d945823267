"""Best-of-n gold on a finished demo run, two ways, from the pool of samples the demo's bon stage draws
(`demo.bon_candidates`: max(bon_n) = 16 per held-out prompt, seeded, so the same samples):

- first-n: gold of the proxy's choice among the first n samples (what `rlhfkit demo` reports as bon_n);
- unbiased: the expected gold of the proxy's choice among n samples drawn without replacement from the N in the
  pool, over all C(N, n) subsets: sorted by proxy, the i-th best (0-based) is the choice with probability
  C(N-1-i, n-1) / C(N, n) (Nakano et al. 2021, WebGPT appendix; Gao et al. 2022). Lower variance for n < N;
  identical at n = N.

Usage: python scripts/bon_unbiased.py RUN_DIR   (prints one JSON line, appends it to exp/bon_unbiased.jsonl)
Session 6 used it on runs/s4-demo-0 and runs/s4-demo-3 (docs/benchmarks.md, the demo section).
"""

import json
import math
import sys
from pathlib import Path

import torch

from rlhfkit import data as data_lib
from rlhfkit import demo
from rlhfkit.world import gold


def main(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    cfg = demo.Config(out=str(run), seed=summary["seed"], scale=summary["config"]["scale"],
                      bon_n=summary["config"]["bon_n"])
    pool = demo.bon_candidates(demo.Context(cfg))
    scores = pool["scores"]
    P, N = scores.shape
    ptexts = [data_lib.prompt_text(r["prompt"]) for r in pool["prompts"] for _ in range(N)]
    g = torch.tensor([gold(pt, t)["total"] for pt, t in zip(ptexts, pool["texts"])], dtype=torch.float64).view(P, N)
    by_proxy = g.gather(1, scores.argsort(1, descending=True))  # gold, the proxy's best first
    out = {"run": str(run), "pool": N, "first_n": {}, "unbiased": {}, "unbiased_se": {}}
    for n in range(1, N + 1):
        out["first_n"][n] = g[torch.arange(P), scores[:, :n].argmax(1)].mean().item()
        chance = torch.tensor([math.comb(N - 1 - i, n - 1) / math.comb(N, n) for i in range(N)], dtype=torch.float64)
        per_prompt = by_proxy @ chance
        out["unbiased"][n] = per_prompt.mean().item()
        out["unbiased_se"][n] = (per_prompt.std() / math.sqrt(P)).item()
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    line = main(Path(sys.argv[1]))
    print(json.dumps(line))
    Path("exp").mkdir(exist_ok=True)
    with open("exp/bon_unbiased.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
