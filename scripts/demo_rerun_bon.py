"""Rerun labels -> reward model -> best-of-n on a finished demo run with changed settings; every other stage reused.

Usage: python scripts/demo_rerun_bon.py SRC_RUN OUT_DIR [JSON overrides of demo.SCALES keys, and annotator_verbosity]
  e.g. python scripts/demo_rerun_bon.py runs/s4-demo-0 exp/e2-0 '{"rm_epochs": 2}'
The world, tokenizer, base and SFT stages of SRC_RUN are linked, not copied. Prints one JSON line (reward-model
metrics; gold, length, proxy and padded rate of best-of-n per n) and appends it to OUT_DIR/../results.jsonl.
Session 5 used it for the best-of-16 table in docs/benchmarks.md.
"""

import json
import os
import sys
import time
from pathlib import Path

from rlhfkit import demo


def main(src: str, out: str, overrides: dict) -> dict:
    src_dir, out_dir = Path(src).resolve(), Path(out)
    summary = json.loads((src_dir / "summary.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("world", "tokenizer", "base", "sft"):
        if not (out_dir / stage).exists():
            os.symlink(src_dir / stage, out_dir / stage)
    (out_dir / "eval").mkdir(exist_ok=True)  # best-of-n's win rates are against SFT's evaluation
    (out_dir / "eval" / "sft.json").write_text((src_dir / "eval" / "sft.json").read_text())
    overrides = dict(overrides)
    verbosity = overrides.pop("annotator_verbosity", summary["config"]["annotator_verbosity"])
    cfg = demo.Config(out=str(out_dir), seed=summary["seed"], scale=summary["config"]["scale"],
                      annotator_verbosity=verbosity)
    ctx = demo.Context(cfg)
    unknown = set(overrides) - set(ctx.s)
    if unknown:
        raise SystemExit(f"unknown scale keys {sorted(unknown)}; known: {sorted(ctx.s)}")
    ctx.s = dict(ctx.s, **overrides)
    t0 = time.perf_counter()
    prefs = demo.stage_prefs(ctx)
    rm = demo.stage_rm(ctx)["rm"]
    bon = demo.stage_bon(ctx)["policies"]
    return {"src": src, "out": out, "seed": cfg.seed, "annotator_verbosity": cfg.annotator_verbosity,
            "overrides": overrides, "wall_s": round(time.perf_counter() - t0, 1), "rm": rm,
            "pairs": prefs["train"].get("pairs"),
            "bon": {n: {"gold": p["gold"], "length": p["mean_length"], "proxy": p["proxy"],
                        "padded": (p.get("style_rates") or {}).get("padded")} for n, p in bon.items()}}


if __name__ == "__main__":
    line = main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    print(json.dumps(line))
    with open(Path(sys.argv[2]).parent / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
