"""Can a reward model on this backbone learn to check answers? A reward model trained on a finished demo run's
candidate pairs, labelled by the demo's annotators or by the gold judge itself, then best-of-n on the demo's pool
(an experiment, not a stage).

Labels (`--labels`):
- ``annotators`` (default): the pairs as labelled (`--data`, default RUN/prefs/train.jsonl);
- ``gold``: the same pairs re-labelled by the gold total (the better response is chosen; equal gold is dropped).
  Noise-free, bias-free labels: if a reward model trained on them still cannot rank correct answers above wrong
  ones within a prompt, the limit is the backbone and the amount of data, not the annotators.

Prints one JSON line (appended to exp/rm_label_probe.jsonl):
- held-out accuracy on RUN/prefs/heldout.jsonl with its annotator ceiling, and the verbosity probe;
- best-of-n's expected gold over all n-subsets of the demo's 16 SFT samples per held-out prompt
  (`demo.bon_candidates`, the same seeded pool as the run's bon stage), n = 1, 2, 4, 8, 12, 16;
- per prompt kind: the within-prompt correlation of the reward with gold `helpful` (what best-of-n compares),
  and best-of-n's gold for n = 1, 2, 4, 8, 16.

    python scripts/rm_label_probe.py runs/demo exp/probe/gold --labels gold
    python scripts/rm_label_probe.py runs/demo exp/probe/margin --overrides '{"margin": true}'

Session 14's numbers: docs/benchmarks.md ("Session 14").
"""

import argparse
import json
from pathlib import Path

import torch

from rlhfkit import data as data_lib
from rlhfkit import demo
from rlhfkit.diagnostics import eval_rm
from rlhfkit.algorithms import rm
from rlhfkit.algorithms.bon import expected_best_of_n
from rlhfkit.models.rewards import load_reward
from rlhfkit.world import gold
from rlhfkit.world.tasks import parse_prompt

from bon_unbiased import within_prompt_corr  # scripts/ is on sys.path when run as a script

NS = (1, 2, 4, 8, 12, 16)


def gold_relabel(src: str, dst: Path) -> int:
    """The pairs of `src` with chosen = the response of higher gold total; pairs of equal gold are dropped."""
    rows = []
    for r in data_lib.read_jsonl(src):
        p = data_lib.prompt_text(r["prompt"])
        gc = gold(p, data_lib.completion_text(r["chosen"]))["total"]
        gr = gold(p, data_lib.completion_text(r["rejected"]))["total"]
        if gc == gr:
            continue
        rows.append(r if gc > gr else r | {"chosen": r["rejected"], "rejected": r["chosen"]})
    data_lib.write_jsonl(rows, dst)
    return len(rows)


def pool_of(run: Path, cache: Path) -> dict:
    """The demo's best-of-n pool for RUN (texts, prompt kinds, per-sample gold via `demo.judge_pool`), cached."""
    if cache.exists():
        return torch.load(cache, weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    cfg = demo.Config(out=str(run), seed=summary["seed"], scale=summary["config"]["scale"],
                      bon_n=summary["config"]["bon_n"])
    pool = demo.bon_candidates(demo.Context(cfg))
    comps, _ = demo.judge_pool(pool["prompts"], pool["texts"], summary["config"]["annotator_verbosity"])
    out = {"prompts": [r["prompt"] for r in pool["prompts"]], "texts": pool["texts"],
           "kinds": [parse_prompt(data_lib.prompt_text(r["prompt"])).kind for r in pool["prompts"]],
           "total": comps["total"], "helpful": comps["helpful"]}
    torch.save(out, cache)
    return out


def main(run: Path, out: Path, labels: str, data: str, overrides: dict) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    verbosity = summary["config"]["annotator_verbosity"]
    out.mkdir(parents=True, exist_ok=True)
    data = data or str(run / "prefs" / "train.jsonl")
    n_pairs = None
    if labels == "gold":
        n_pairs = gold_relabel(data, out / "gold_train.jsonl")
        data = str(out / "gold_train.jsonl")
    settings = dict(output_dir=str(out / "rm"), seed=summary["seed"], threads=2, progress=False,
                    model=str(run / "sft"), data=data, **demo.rm_settings(demo.SCALES[summary["config"]["scale"]]))
    rm.train(rm.Config(**(settings | overrides)))
    res = eval_rm.run(eval_rm.Config(reward=str(out / "rm"), data=str(run / "prefs" / "heldout.jsonl"),
                                     output=str(out / "eval.json"), world=True, verbosity_scale=verbosity))
    pool = pool_of(run, run / "bon_pool.pt")
    P, n = pool["total"].shape
    prompts = [p for p in pool["prompts"] for _ in range(n)]
    score = load_reward(str(out / "rm"))(prompts, pool["texts"])["score"].double().view(P, n)
    g = pool["total"]
    by_kind = {}
    for kind in sorted(set(pool["kinds"])):
        idx = [i for i, k in enumerate(pool["kinds"]) if k == kind]
        by_kind[kind] = {"helpful_corr": round(within_prompt_corr(score[idx], pool["helpful"][idx]), 3),
                         "bon": [round(expected_best_of_n(score[idx], g[idx], k).mean().item(), 3)
                                 for k in (1, 2, 4, 8, 16)]}
    line = {"run": str(run), "out": str(out), "labels": labels, "data": data, "pairs": n_pairs,
            "overrides": overrides, "accuracy": res["accuracy"], "ceiling": res["ceiling"],
            "ratio": res["accuracy"] / res["ceiling"], "length_correlation": res["length_correlation"],
            "bon_n": list(NS), "bon": [round(expected_best_of_n(score, g, k).mean().item(), 4) for k in NS],
            "by_kind": by_kind}
    return append_line("exp/rm_label_probe.jsonl", line)


def append_line(path: str, line: dict) -> dict:
    """Append one JSON line to an experiment log (created with its folder) and return it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--labels", choices=("annotators", "gold"), default="annotators")
    ap.add_argument("--data", default="", help="preference rows to train on (default RUN/prefs/train.jsonl)")
    ap.add_argument("--overrides", default="{}", help="JSON: rm.Config fields over the demo's reward-model settings")
    a = ap.parse_args()
    print(json.dumps(main(a.run, a.out, a.labels, a.data, json.loads(a.overrides))))
