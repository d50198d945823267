"""The best any reward model that cannot check answers could do at best-of-n on a demo run's pool (an experiment).

The picker is the demo annotators' mean *expected* utility (gold plus their verbosity, confidence and agreement
biases, `world.annotators.utility`) with correctness hidden. For a response that claims an answer (a `verdict` on
`lookup`, `arith`, `list` and `wrong_belief` prompts, agreement with the user excepted), its utility is the mix over
"correct" and "wrong" with the kind's base rate of correct claims in the pool. Everything else a reward model could
read from the text stays: length, fillers, refusals, "I don't know", a confident tone, agreeing with the user.

A reward model that learnt these labels perfectly *except* for checking answers would pick like this. If this
picker's gold barely rises from n = 8 to n = 16, a real reward model's dip there is within its own error, and no
reward-model setting that leaves answers unchecked will reliably lift it. Curves are the expected gold over every
n-subset of the demo's 16 SFT samples per held-out prompt (`bon.expected_best_of_n`), for the demo's verbosity scale
and gold weights, and for the `--grid` of other scales and `concise` weights (both annotators and gold re-weighted).

    python scripts/bon_blind_picker.py runs/demo [--grid]

Session 14's numbers: docs/benchmarks.md ("Session 14").
"""

import argparse
import collections
import dataclasses
import itertools
import json
from pathlib import Path

import torch

from rlhfkit import data as data_lib
from rlhfkit.bon import expected_best_of_n
from rlhfkit.world.annotators import default_annotators, utility_from_analysis
from rlhfkit.world.gold import GOLD_WEIGHTS, gold_from_analysis
from rlhfkit.world.styles import analyse
from rlhfkit.world.tasks import parse_prompt

from rm_label_probe import pool_of  # scripts/ is on sys.path when run as a script

NS = (1, 2, 4, 8, 12, 16)
CHECKED_KINDS = ("lookup", "arith", "list", "wrong_belief")


def hides_correctness(task, a) -> bool:
    """Whether the response's gold turns on a claim only a checker can judge (not on agreeing with the user)."""
    return a.verdict != "none" and not (task.kind == "wrong_belief" and a.agrees)


def curves(rows: list, shape: tuple[int, int], rates: dict, verbosity: float, concise: float) -> dict:
    weights = dict(GOLD_WEIGHTS, concise=concise)
    anns = [dataclasses.replace(x, weights=weights) for x in default_annotators(verbosity)]

    def mean_utility(task, a) -> float:
        return sum(utility_from_analysis(x, task, a) for x in anns) / len(anns)

    def blind(task, a) -> float:
        if not hides_correctness(task, a):
            return mean_utility(task, a)
        q = rates[task.kind]
        return (q * mean_utility(task, dataclasses.replace(a, verdict="correct"))
                + (1 - q) * mean_utility(task, dataclasses.replace(a, verdict="wrong")))

    g = torch.tensor([gold_from_analysis(t, a, weights)["total"] for t, a in rows], dtype=torch.float64).view(shape)
    out = {}
    for name, fn in (("annotators", mean_utility), ("blind", blind)):
        sel = torch.tensor([fn(t, a) for t, a in rows], dtype=torch.float64).view(shape)
        out[name] = [round(expected_best_of_n(sel, g, n).mean().item(), 4) for n in NS]
    return out


def main(run: Path, grid: bool) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    pool = pool_of(run, run / "bon_pool.pt")
    shape = tuple(pool["total"].shape)
    rows, counts = [], collections.Counter()
    for i, prompt in enumerate(pool["prompts"]):
        task = parse_prompt(data_lib.prompt_text(prompt))
        for j in range(shape[1]):
            a = analyse(task, pool["texts"][i * shape[1] + j])
            rows.append((task, a))
            if hides_correctness(task, a):
                counts[task.kind, a.verdict] += 1
    rates = {k: counts[k, "correct"] / max(1, counts[k, "correct"] + counts[k, "wrong"]) for k in CHECKED_KINDS}
    demo_verbosity = summary["config"]["annotator_verbosity"]
    settings = [(demo_verbosity, GOLD_WEIGHTS["concise"])]
    if grid:
        settings += [s for s in itertools.product((0.3, 0.4, 0.5), (0.25, 0.5)) if s != settings[0]]
    line = {"run": str(run), "n": list(NS), "correct_rate": {k: round(v, 3) for k, v in rates.items()},
            "curves": [{"verbosity": v, "concise_weight": c} | curves(rows, shape, rates, v, c) for v, c in settings]}
    Path("exp").mkdir(exist_ok=True)
    with open("exp/bon_blind_picker.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--grid", action="store_true", help="also other verbosity scales and concise weights")
    a = ap.parse_args()
    print(json.dumps(main(a.run, a.grid)))
