"""A reward model trained on more labels than the demo's, for a finished demo run (an experiment, not a stage).

Labels N_PROMPTS train-split prompts the demo's way (the first 512 are the demo's own labels, reused as they are;
for the rest, K = 4 candidates each, 2 from SFT and 2 from the base model, ranked by the demo's annotators), trains
a reward model on all of them with the demo's settings plus the JSON overrides, and evaluates it on the demo's
held-out labels. The extra labels are kept in OUT/prefs and reused by later calls with the same OUT; each reward
model goes to OUT/NAME. Compare best-of-n with it on the demo's own pool:

    python scripts/rm_more_labels.py runs/demo exp/more0 2560 gbp3 '{"num_epochs": 3, "group_by_prompt": true}'
    python scripts/bon_unbiased.py runs/demo --reward exp/more0/gbp3

Session 7's numbers are in docs/benchmarks.md (the best-of-16 section).
"""

import json
import os
import sys
from pathlib import Path

from rlhfkit import data as data_lib
from rlhfkit import demo
from rlhfkit.diagnostics import eval_rm
from rlhfkit.algorithms import rm
from rlhfkit.world import label
from rlhfkit.world.corpus import WorldConfig, train_prompts


def main(run: Path, out: Path, n_prompts: int, name: str, overrides: dict) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    seed, verbosity = summary["seed"], summary["config"]["annotator_verbosity"]
    ctx = demo.Context(demo.Config(out=str(out), seed=seed))
    (out / "world").mkdir(parents=True, exist_ok=True)
    for stage in ("sft", "base"):  # _candidates samples from OUT/sft and OUT/base: the run's own models
        if not (out / stage).exists():
            os.symlink((run / stage).resolve(), out / stage)
    train = out / "prefs" / f"train-{n_prompts}.jsonl"
    if not train.exists():
        rows = data_lib.read_jsonl(str(run / "prefs" / "train.jsonl"))
        n_demo = len(data_lib.read_jsonl(str(run / "world" / "train_prompts.jsonl")))
        if n_prompts > n_demo:  # N_PROMPTS <= 512: the demo's labels alone (to try reward-model settings)
            extra = train_prompts(WorldConfig(seed=seed, n_train_prompts=n_prompts))[n_demo:]  # the demo's first
            data_lib.write_jsonl(extra, ctx.path("world", "extra_prompts.jsonl"))
            cand = demo._candidates(ctx, ctx.path("world", "extra_prompts.jsonl"), "extra", 5)
            label.run(label.Config(candidates=cand, out=ctx.path("prefs", "extra.jsonl"), mode="ranking",
                                   seed=seed + 5, verbosity_scale=verbosity))
            first = max(r["group"] for r in rows) + 1  # label.run numbers groups from 0 in each file: keep apart
            rows += [r | {"group": r["group"] + first} for r in data_lib.read_jsonl(ctx.path("prefs", "extra.jsonl"))]
        data_lib.write_jsonl(rows, train)

    settings = dict(ctx.common(name), model=str(run / "sft"), data=str(train), **demo.rm_settings(ctx.s))
    rm.train(rm.Config(**(settings | overrides)))
    res = eval_rm.run(eval_rm.Config(reward=ctx.path(name), data=str(run / "prefs" / "heldout.jsonl"),
                                     output=ctx.path(name, "eval.json"), world=True, verbosity_scale=verbosity))
    return {"run": str(run), "reward": ctx.path(name), "prompts": n_prompts, "pairs": len(train.read_text().splitlines()),
            "overrides": overrides} | {k: res.get(k) for k in ("accuracy", "ceiling", "length_correlation")}


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    line = main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                json.loads(sys.argv[5]) if len(sys.argv) > 5 else {})
    print(json.dumps(line))
