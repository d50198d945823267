#!/usr/bin/env bash
# rlhfkit vs TRL 1.16 on the shared CPU workloads (BENCHMARKS.md), interleaved in one session so both see the same
# machine. Usage: bash scripts/bench_all.sh [ROUNDS=3] [TRAINERS="sft rm dpo kto grpo rloo ppo"]
# Needs: .venv (make test), .bench-venv with TRL (see docs/benchmarks.md), bench-data/ (make_tiny.py).
set -uo pipefail
ROUNDS=${1:-3}
TRAINERS=${2:-"sft rm dpo kto grpo rloo ppo"}
export BENCH_DATA=${BENCH_DATA:-bench-data} OMP_NUM_THREADS=2
R=${R:-bench-results}; mkdir -p "$R"
TRL=".bench-venv/bin/python ../shared/bench/trl_bench.py"
RK=".venv/bin/rlhfkit bench"
C="--steps 20 --batch 8 --max-length 256 --seed 42 --threads 2"
D=$BENCH_DATA
RL="--model $D/small --data $D/rl_prompts.jsonl --reward-model $D/small-rm"
for r in $(seq "$ROUNDS"); do
  for t in $TRAINERS; do
    case $t in
      sft)  $TRL sft $C --results $R/trl_sft.jsonl >/dev/null
            $RK sft --model $D/small --data $D/sft.jsonl $C --results $R/rlhfkit_sft.jsonl >/dev/null ;;
      rm)   $TRL reward $C --results $R/trl_rm.jsonl >/dev/null
            $RK rm --model $D/small-rm --data $D/preference.jsonl $C --normalize false --results $R/rlhfkit_rm.jsonl >/dev/null ;;
      dpo)  $TRL dpo $C --loss-type sigmoid --results $R/trl_dpo.jsonl >/dev/null
            $RK dpo --model $D/small --data $D/preference.jsonl $C --loss sigmoid --results $R/rlhfkit_dpo.jsonl >/dev/null
            $TRL dpo $C --loss-type sigmoid --precompute-ref 1 --results $R/trl_dpo_pre.jsonl >/dev/null
            $RK dpo --model $D/small --data $D/preference.jsonl $C --loss sigmoid --precompute-ref true \
                --ref-cache-dir /tmp/rlhfkit-refcache-r$r --results $R/rlhfkit_dpo_pre.jsonl >/dev/null ;;
      kto)  $TRL kto $C --results $R/trl_kto.jsonl >/dev/null
            $RK kto --model $D/small --data $D/preference.jsonl $C --results $R/rlhfkit_kto.jsonl >/dev/null ;;
      grpo) $TRL grpo $C --beta 0.04 --num-generations 4 --max-new-tokens 32 --results $R/trl_grpo.jsonl >/dev/null
            $RK grpo $RL $C --kl-coef 0.04 --results $R/rlhfkit_grpo.jsonl >/dev/null ;;
      rloo) $TRL rloo $C --beta 0.05 --num-generations 4 --max-new-tokens 32 --results $R/trl_rloo.jsonl >/dev/null
            $RK rloo $RL $C --kl-coef 0.05 --results $R/rlhfkit_rloo.jsonl >/dev/null ;;
      ppo)  $RK ppo $RL $C --results $R/rlhfkit_ppo.jsonl >/dev/null ;;
    esac
    echo "round $r $t done" >&2
  done
done
for f in "$R"/*.jsonl; do echo "## $f"; .venv/bin/python ../shared/bench/trl_bench_summary.py "$f"; done
echo "## ratios"; .venv/bin/python scripts/bench_ratios.py "$R"
