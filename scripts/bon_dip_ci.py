"""Is best-of-16's dip below best-of-8 a real fall or noise? A paired bootstrap over prompts (an experiment).

For every held-out prompt of a finished demo run, the expected gold of best-of-n over all n-subsets of its 16 SFT
samples (`bon.expected_best_of_n`) is a number per prompt; the difference between two n's is paired by prompt. The
bootstrap resamples prompts (each prompt's 16 samples are one draw of the pool, so this covers both the prompt set
and the sampling) and gives a 95% percentile interval of the mean difference, for the demo's reward model and for
the correctness-blind ideal picker (`world.annotators.correctness_blind_utilities`). The demo's summary carries
the reward model's steps too (`bon_selectors.reward_model_steps`).

    python scripts/bon_dip_ci.py runs/demo [--resamples 10000]

Session 15's numbers: docs/benchmarks.md ("Session 15").
"""

import argparse
import json
from pathlib import Path

import torch

from rlhfkit import data as data_lib
from rlhfkit.algorithms.bon import expected_best_of_n
from rlhfkit.diagnostics.metrics import paired_bootstrap
from rlhfkit.models.rewards import load_reward
from rlhfkit.world.annotators import correctness_blind_utilities, default_annotators

from rm_label_probe import append_line, pool_of  # scripts/ is on sys.path when run as a script

PAIRS = ((4, 8), (8, 16))


def main(run: Path, resamples: int) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    pool = pool_of(run, run / "bon_pool.pt")
    g = pool["total"]
    P, n = g.shape
    prompts = [p for p in pool["prompts"] for _ in range(n)]  # as stored: the reward model formats them itself
    texts = [data_lib.prompt_text(p) for p in prompts]  # the world's annotators read plain text
    pickers = {"reward_model": load_reward(str(run / "rm"))(prompts, pool["texts"])["score"].double().view(P, n),
               "annotators_blind": torch.tensor(correctness_blind_utilities(
                   texts, pool["texts"], default_annotators(summary["config"]["annotator_verbosity"])),
                   dtype=torch.float64).view(P, n)}
    line = {"run": str(run), "prompts": P, "resamples": resamples}
    for name, sel in pickers.items():
        per_n = {k: expected_best_of_n(sel, g, k) for k in sorted({k for pair in PAIRS for k in pair})}
        line[name] = {f"{a}->{b}": {k: round(v, 4) for k, v in paired_bootstrap(per_n[a], per_n[b], resamples).items()}
                      for a, b in PAIRS}
    return append_line("exp/bon_dip_ci.jsonl", line)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--resamples", type=int, default=10_000)
    a = ap.parse_args()
    print(json.dumps(main(a.run, a.resamples)))
