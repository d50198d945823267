#!/usr/bin/env bash
# DPO bench rounds of TRL, this checkout and an older commit of rlhfkit, interleaved in one session, on the fly and
# with the reference precomputed, so the older code's ratio is measured on the same machine state as this one's.
# Usage: git worktree add /tmp/old COMMIT && R=results-dir OLD=/tmp/old bash scripts/bench_dpo_vs_commit.sh [ROUNDS=4]
# Needs .venv, .bench-venv with TRL and bench-data/ (docs/benchmarks.md). The older code runs through this
# checkout's .venv with OLD on PYTHONPATH (console scripts then import it before the editable install).
set -uo pipefail
N=${1:-4}; R=${R:-bench-vs-commit}; OLD=${OLD:?set OLD to a worktree of the older commit}; mkdir -p "$R"
export OMP_NUM_THREADS=2
TRL=".bench-venv/bin/python ../shared/bench/trl_bench.py"
C="--steps 20 --batch 8 --max-length 256 --seed 42 --threads 2"
W="--model bench-data/small --data bench-data/preference.jsonl $C --loss sigmoid"
for r in $(seq "$N"); do
  $TRL dpo $C --loss-type sigmoid --results "$R/trl_dpo.jsonl" >/dev/null 2>&1
  .venv/bin/rlhfkit bench dpo $W --results "$R/new_dpo.jsonl" >/dev/null 2>&1
  PYTHONPATH="$OLD" .venv/bin/rlhfkit bench dpo $W --results "$R/old_dpo.jsonl" >/dev/null 2>&1
  $TRL dpo $C --loss-type sigmoid --precompute-ref 1 --results "$R/trl_pre.jsonl" >/dev/null 2>&1
  .venv/bin/rlhfkit bench dpo $W --precompute-ref true --ref-cache-dir "/tmp/rc-new-$r" \
      --results "$R/new_pre.jsonl" >/dev/null 2>&1
  PYTHONPATH="$OLD" .venv/bin/rlhfkit bench dpo $W --precompute-ref true --ref-cache-dir "/tmp/rc-old-$r" \
      --results "$R/old_pre.jsonl" >/dev/null 2>&1
  echo "round $r done" >&2
done
for f in "$R"/*.jsonl; do echo "## $f"; .venv/bin/python ../shared/bench/trl_bench_summary.py "$f"; done
