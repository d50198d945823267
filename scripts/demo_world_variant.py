"""A demo run's labels -> reward model -> best-of-n redone with other scale settings for the policy side (an
experiment, not a stage): reuses RUN's world and tokenizer (and its base model unless pretraining settings change),
redoes base (if needed), SFT, labels and the reward model with the demo's code, then prints the three best-of-n
pickers of `demo.bon_selectors` on the new SFT policy's 16 samples per held-out prompt.

    python scripts/demo_world_variant.py runs/s6-demo-0 exp/pt600 '{"pretrain_steps": 600}'
    python scripts/demo_world_variant.py runs/s6-demo-0 exp/sft4 '{"sft_epochs": 4}'
    python scripts/demo_world_variant.py runs/s8-demo-0 exp/untied '{"tie_embeddings": false}'

Session 7's numbers: docs/benchmarks.md (the best-of-16 section).
"""

import json
import os
import sys
import time
from pathlib import Path

from rlhfkit import demo


def main(run: Path, out: Path, overrides: dict) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    unknown = set(overrides) - set(demo.SCALES["default"])
    if unknown:
        sys.exit(f"unknown scale settings: {sorted(unknown)}")
    redo_world = any(k in ("n_pretrain", "n_sft", "vocab") for k in overrides)
    base_keys = ("hidden", "layers", "heads", "block", "tie_embeddings")
    redo_base = redo_world or any(k.startswith("pretrain_") or k in base_keys for k in overrides)
    out.mkdir(parents=True, exist_ok=True)
    for stage in (() if redo_world else ("world", "tokenizer")) + (() if redo_base else ("base",)):
        if not (out / stage).exists():
            os.symlink((run / stage).resolve(), out / stage)
    ctx = demo.Context(demo.Config(out=str(out), seed=summary["seed"]))
    ctx.s = dict(ctx.s, **overrides)
    stages = ([("world", demo.stage_world), ("tokenizer", demo.stage_tokenizer)] if redo_world else []) + (
        [("base", demo.stage_base)] if redo_base else []) + [
        ("sft", demo.stage_sft), ("prefs", demo.stage_prefs), ("rm", demo.stage_rm)]
    result = {"run": str(run), "out": str(out), "overrides": overrides, "seconds": {}}
    for name, fn in stages:
        t0 = time.perf_counter()
        res = fn(ctx)
        result["seconds"][name] = round(time.perf_counter() - t0, 1)
        if name == "rm":
            result["rm"] = res["rm"]
    pool = demo.bon_candidates(ctx)
    result["bon_selectors"] = demo.bon_selectors(pool["prompts"], pool["texts"], pool["scores"],
                                                 [1] + list(ctx.cfg.bon_n), summary["config"]["annotator_verbosity"])
    return result


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))))
