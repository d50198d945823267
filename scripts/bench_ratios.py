"""rlhfkit / TRL ratios from a `scripts/bench_all.sh` results folder: per trainer, the medians of samples/s, the
ratio of medians (what docs/benchmarks.md quotes), the per-round ratios (round i of one against round i of the
other: they ran back to back) and the peak RSS medians.

    python scripts/bench_ratios.py bench-s5
"""

import json
import statistics
import sys
from pathlib import Path

# rlhfkit results file stem -> TRL's (rlhfkit's ppo has no TRL counterpart: BENCHMARKS.md compares it with GRPO)
PAIRS = {"sft": "sft", "rm": "rm", "dpo": "dpo", "dpo_pre": "dpo_pre", "kto": "kto", "grpo": "grpo",
         "rloo": "rloo", "ppo": "grpo"}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(folder: str) -> None:
    root = Path(folder)
    print("| trainer | n | rlhfkit | TRL | ratio of medians (per round) | peak RSS MiB rlhfkit / TRL |")
    print("|---|---|---|---|---|---|")
    for ours, theirs in PAIRS.items():
        a, b = rows(root / f"rlhfkit_{ours}.jsonl"), rows(root / f"trl_{theirs}.jsonl")
        if not a or not b:
            continue
        sa, sb = [r["samples_per_s"] for r in a], [r["samples_per_s"] for r in b]
        per_round = ", ".join(f"{x / y:.2f}" for x, y in zip(sa, sb)) if ours != "ppo" else "-"
        ma, mb = statistics.median(sa), statistics.median(sb)
        ra, rb = (statistics.median(r["peak_rss_mib"] for r in x) for x in (a, b))
        rss = f"{ra:.0f} / {rb:.0f}"
        print(f"| {ours} | {len(sa)} | {ma:.2f} | {mb:.2f} | **{ma / mb:.2f}x** ({per_round}) | {rss} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
