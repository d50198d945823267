"""The best any reward model that cannot check answers could do at best-of-n on a demo run's pool (an experiment).

The picker is the demo annotators' mean *expected* utility with correctness hidden
(`world.annotators.correctness_blind_utilities`, also the demo's `bon_selectors.annotators_blind`). For a response
that claims an answer, its utility is the mix over "correct" and "wrong" with the kind's base rate of correct claims
in the pool. Everything else a reward model could read from the text stays: length, fillers, refusals, "I don't
know", a confident tone, agreeing with the user.

A reward model that learnt these labels perfectly *except* for checking answers would pick like this. If this
picker's gold barely rises from n = 8 to n = 16, a real reward model's dip there is within its own error, and no
reward-model setting that leaves answers unchecked will reliably lift it. Curves are the expected gold over every
n-subset of the demo's 16 SFT samples per held-out prompt (`bon.expected_best_of_n`), for the demo's verbosity scale
and gold weights, and for the `--grid` of other scales and `concise` weights (both annotators and gold re-weighted).

    python scripts/bon_blind_picker.py runs/demo [--grid]

Session 14's numbers: docs/benchmarks.md ("Session 14").
"""

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import torch

from rlhfkit import data as data_lib
from rlhfkit.algorithms.bon import expected_best_of_n
from rlhfkit.world import gold
from rlhfkit.world.annotators import correctness_blind_utilities, default_annotators, utility
from rlhfkit.world.gold import GOLD_WEIGHTS

from rm_label_probe import append_line, pool_of  # scripts/ is on sys.path when run as a script

NS = (1, 2, 4, 8, 12, 16)


def curves(prompts: list[str], texts: list[str], shape: tuple, verbosity: float, concise: float) -> dict:
    """Best-of-n gold (gold re-weighted too) picked by the annotators' expected utility, full and blind."""
    weights = dict(GOLD_WEIGHTS, concise=concise)
    anns = [dataclasses.replace(x, weights=weights) for x in default_annotators(verbosity)]
    g = torch.tensor([gold(p, t, weights)["total"] for p, t in zip(prompts, texts)], dtype=torch.float64).view(shape)
    full = [sum(utility(x, p, t) for x in anns) / len(anns) for p, t in zip(prompts, texts)]
    blind = correctness_blind_utilities(prompts, texts, anns)
    return {name: [round(expected_best_of_n(torch.tensor(u, dtype=torch.float64).view(shape), g, n).mean().item(), 4)
                   for n in NS] for name, u in (("annotators", full), ("blind", blind))}


def main(run: Path, grid: bool) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    pool = pool_of(run, run / "bon_pool.pt")
    shape = tuple(pool["total"].shape)
    prompts = [data_lib.prompt_text(p) for p in pool["prompts"] for _ in range(shape[1])]
    settings = [(summary["config"]["annotator_verbosity"], GOLD_WEIGHTS["concise"])]
    if grid:
        settings += [s for s in itertools.product((0.3, 0.4, 0.5), (0.25, 0.5)) if s != settings[0]]
    line = {"run": str(run), "n": list(NS),
            "curves": [{"verbosity": v, "concise_weight": c} | curves(prompts, pool["texts"], shape, v, c)
                       for v, c in settings]}
    return append_line("exp/bon_blind_picker.jsonl", line)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--grid", action="store_true", help="also other verbosity scales and concise weights")
    a = ap.parse_args()
    print(json.dumps(main(a.run, a.grid)))
