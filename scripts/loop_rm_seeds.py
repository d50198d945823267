"""Probe: how much of a finished loop round's before/after change is the reward model's training seed or recipe.

Retrains the reward model of rounds 1-3 of a `rlhfkit loop --world` run on their saved rm_data.jsonl with S other
seeds (and, with --set / --data, another recipe), then scores round 2's and 3's saved samples: the measure
prompts' pairs in gold order and by their simulated labels, and the round's own held-out labels. Writes
OUT/result.json: per round and pair set, each seed's accuracy before (round k-1's data) and after (round k's).

    .venv/bin/python scripts/loop_rm_seeds.py --run runs/loop-kr-0 --out runs/seeds-kr0 [--seeds 3]
        [--data all|new|new2x] [--set num_epochs=10 --set learning_rate=1e-3]
"""
import argparse
import json
from pathlib import Path

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit import demo, loop
from rlhfkit.algorithms import rm
from rlhfkit.diagnostics.evaluate import WORLD_GOLD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished `rlhfkit loop --world` output directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", default="all", choices=["all", "new", "new2x"],
                    help="every label so far (the loop's), the round's own only, or every label with the round's twice")
    ap.add_argument("--set", action="append", default=[], help="a reward-model setting k=v over the demo's")
    a = ap.parse_args()
    torch.set_num_threads(1)
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_lib.from_dict(loop.Config, config_lib.load_yaml(run / "config.yaml"))
    start = loop.Start(str(run / "demo" / "sft"), "", str(run / "demo" / "world" / "heldout_prompts.jsonl"), WORLD_GOLD)
    settings = demo.rm_settings(loop.sizes(cfg))
    for kv in a.set:
        k, v = kv.split("=", 1)
        settings[k] = type(settings[k])(v)

    models = {}
    for k in (1, 2, 3):
        data = run / f"round_{k}" / "rm_data.jsonl"
        if a.data != "all":
            new = [r for r in data_lib.read_jsonl(run / f"round_{k}" / "labels.jsonl") if not r["heldout"]]
            rows = new if a.data == "new" else data_lib.read_jsonl(data) + new
            data = out / f"data-r{k}.jsonl"
            data_lib.write_jsonl(rows, data)
        for s in range(a.seeds):
            d = out / f"r{k}-s{s}"
            if not (d / "model.safetensors").exists():
                rm.train(rm.Config(output_dir=str(d), seed=7000 + 31 * s + k, threads=1, model=start.model,
                                   data=str(data), norm_data=str(run / f"round_{k}" / "samples.jsonl"), **settings))
            models[k, s] = str(d)

    res = {"run": str(run), "settings": settings, "data": a.data, "seeds": a.seeds, "rounds": {}}
    for k in (2, 3):
        rd = run / f"round_{k}"
        cands = data_lib.read_jsonl(rd / "measure_samples.jsonl")
        groups = list(range(len(cands)))
        own = data_lib.read_jsonl(rd / "samples.jsonl")
        sets = {"gold": (cands, loop.gold_order(loop.gold_scores(start, cands, groups), cands, groups)),
                "labels": (cands, loop.label_pairs(loop.world_labels(cfg, cfg.seed * 1000 + k + 500, cands), cands)),
                "val_labels": (own, loop.label_pairs([r for r in data_lib.read_jsonl(rd / "labels.jsonl")
                                                      if r["heldout"]], own))}
        res["rounds"][k] = {}
        for name, (cs, pairs) in sets.items():
            acc = {kk: [sum(loop.pair_correct(models[kk, s], cs, pairs)) / len(pairs) for s in range(a.seeds)]
                   for kk in (k - 1, k)}
            res["rounds"][k][name] = {"n": len(pairs), "before": acc[k - 1], "after": acc[k]}
        print(k, json.dumps(res["rounds"][k]), flush=True)
    (out / "result.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
