# On a CUDA machine: CUDA correctness checks, then every trainer on the 0.82 B HH-RLHF workload, rlhfkit and
# TRL alternating (same model, data, batch 16, max length 512, 12 steps, bf16 autocast over fp32 weights).
# run(command="bash scripts/gpu/run4.sh", carry=[".gpu", ".whl"]); .gpu/ holds make_tiny.py, make_gpu_workload.py,
# trl_bench.py and data/hh_rlhf (see ../shared/bench/README.md), .whl/ TRL 1.16 and datasets 5.2 wheels.
source scripts/gpu/common.sh
T0=$SECONDS; BUDGET=${BUDGET:-520}
nvidia-smi -L; python3 -c "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)"
[ "${PHASE:-a}" = a ] && { timeout 120 python3 scripts/gpu_check.py > $OUT/gpu_check.txt 2>&1; echo "gpu_check rc $?"; tail -9 $OUT/gpu_check.txt; }
python3 .gpu/make_tiny.py --out /tmp/bd > /dev/null && \
  python3 .gpu/make_gpu_workload.py --tiny /tmp/bd --out /tmp/gw --data .gpu/data/hh_rlhf > /dev/null || exit 1
echo "workload ready at $((SECONDS - T0)) s"
C="--steps 12 --batch 16 --max-length 512 --threads 8"
PREF="--model /tmp/gw/big --data /tmp/gw/hh_pref.jsonl $C"; SFT="--model /tmp/gw/big --data /tmp/gw/hh_sft.jsonl $C"
RL="--model /tmp/gw/big --data /tmp/bd/rl_prompts.jsonl --reward-model /tmp/bd/small-rm $C"
TRL="python3 scripts/gpu/trl_peak.py"
run() {  # name, command...: one JSON line to $OUT/gpu_bench.jsonl and a short summary, or the error's tail
  local name=$1; shift
  if [ $((BUDGET - (SECONDS - T0))) -lt 30 ]; then echo "SKIP $name (budget)"; return; fi
  timeout 150 "$@" > /tmp/o.txt 2> /tmp/e.txt
  if grep -q '^{' /tmp/o.txt; then
    grep '^{' /tmp/o.txt | tail -1 | tee -a $OUT/gpu_bench.jsonl | python3 -c "import json,sys; r=json.load(sys.stdin); print('$name', {k: r.get(k) for k in ('samples_per_s','steady_step_s','peak_gpu_mib','mfu','mfu_steady','gen_tokens_per_s','gen_s','wall_s','final_loss')})"
  else echo "FAIL $name"; tail -25 /tmp/e.txt; tail -80 /tmp/e.txt > $OUT/fail_$name.txt; fi
}
if [ "${PHASE:-a}" = d ]; then  # CUDA-graph reuse in generation, rloo, bf16 weights, gradient checkpointing
  timeout 70 python3 scripts/gpu/gen_bench.py /tmp/gw/big /tmp/bd/rl_prompts.jsonl 16 64 2>&1 | tail -4 | tee $OUT/gen_bench.jsonl
  run rloo $RK bench rloo $RL --precision bf16 --kl-coef 0.05
  run trl-rloo $TRL rloo --gpu $RL --beta 0.05 --results /dev/null
  run grpo $RK bench grpo $RL --precision bf16 --kl-coef 0.04
  run sft-bf16w $RK bench sft $SFT --precision bf16 --weights-dtype bf16
  run dpo-bf16w $RK bench dpo $PREF --precision bf16 --weights-dtype bf16 --loss sigmoid
  run dpo-gc $RK bench dpo $PREF --precision bf16 --loss sigmoid --gradient-checkpointing true
elif [ "${PHASE:-a}" = c ]; then  # generation's parts, TRL's reward trainer, ppo, TRL's rloo
  timeout 70 python3 scripts/gpu/gen_bench.py /tmp/gw/big /tmp/bd/rl_prompts.jsonl 16 64 2>&1 | tail -4 | tee $OUT/gen_bench.jsonl
  run trl-rm $TRL reward --gpu $PREF --results /dev/null
  run ppo $RK bench ppo $RL --precision bf16
  run trl-rloo $TRL rloo --gpu $RL --beta 0.05 --results /dev/null
elif [ "${PHASE:-a}" = a ]; then  # dpo, sft and grpo against TRL, DPO first
  run dpo $RK bench dpo $PREF --precision bf16 --loss sigmoid
  run trl-dpo $TRL dpo --gpu $PREF --results /dev/null
  run sft $RK bench sft $SFT --precision bf16
  run trl-sft $TRL sft --gpu $SFT --results /dev/null
  run grpo $RK bench grpo $RL --precision bf16 --kl-coef 0.04
  run trl-grpo $TRL grpo --gpu $RL --beta 0.04 --results /dev/null
else  # generation's parts, the rest of the trainers, then where an SFT step spends its time
  timeout 70 python3 scripts/gpu/gen_bench.py /tmp/gw/big /tmp/bd/rl_prompts.jsonl 16 64 2>&1 | tail -4 | tee $OUT/gen_bench.jsonl
  run kto $RK bench kto $PREF --precision bf16
  run trl-kto $TRL kto --gpu $PREF --results /dev/null
  run rm $RK bench rm $PREF --precision bf16 --normalize false
  run trl-rm $TRL reward --gpu $PREF --results /dev/null
  run rloo $RK bench rloo $RL --precision bf16 --kl-coef 0.05
  run trl-rloo $TRL rloo --gpu $RL --beta 0.05 --results /dev/null
  run ppo $RK bench ppo $RL --precision bf16
  if [ $((SECONDS - T0)) -lt 330 ]; then
    timeout 80 python3 scripts/gpu/profile_step.py sft $SFT --steps 5 --precision bf16 > $OUT/profile_sft.txt 2>&1
    head -28 $OUT/profile_sft.txt
  fi
fi
echo "done at $((SECONDS - T0)) s"
