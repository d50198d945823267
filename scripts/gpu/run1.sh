# On a CUDA machine: gpu_check.py, every trainer's `rlhfkit bench` on the shared tiny workload, the toy demo.
# run(command="bash scripts/gpu/run1.sh", carry=[".gpu", ".whl"]) after scripts/gpu/prepare.sh; writes into $OUT.
source scripts/gpu/common.sh
nvidia-smi -L; python3 -c "import torch, transformers, datasets, accelerate; print(torch.__version__, transformers.__version__, datasets.__version__, accelerate.__version__)"
python3 scripts/gpu_check.py 2>&1 | tee $OUT/gpu_check.txt
tiny_data
D=/tmp/bd; C="--steps 20 --batch 8 --max-length 256 --seed 42 --threads 2"; RL="--model $D/small --data $D/rl_prompts.jsonl --reward-model $D/small-rm"
for t in sft rm dpo kto grpo rloo ppo; do
  case $t in
    sft) $RK bench sft --model $D/small --data $D/sft.jsonl $C ;;
    rm) $RK bench rm --model $D/small-rm --data $D/preference.jsonl $C --normalize false ;;
    dpo) $RK bench dpo --model $D/small --data $D/preference.jsonl $C --loss sigmoid ;;
    kto) $RK bench kto --model $D/small --data $D/preference.jsonl $C ;;
    grpo) $RK bench grpo $RL $C --kl-coef 0.04 ;;
    rloo) $RK bench rloo $RL $C --kl-coef 0.05 ;;
    ppo) $RK bench ppo $RL $C ;;
  esac > /tmp/b.json 2> /tmp/b.err || { echo "bench $t FAILED"; tail -20 /tmp/b.err; cat /tmp/b.err >> $OUT/bench_fail.err; }
  cat /tmp/b.json | tee -a $OUT/bench_gpu.jsonl
done
time $RK demo --scale toy --out /tmp/demo-toy > $OUT/demo_toy.log 2>&1 || { echo "toy demo FAILED"; tail -30 $OUT/demo_toy.log; }
tail -5 $OUT/demo_toy.log; cp /tmp/demo-toy/summary.json $OUT/demo_toy_summary.json 2>/dev/null
ls $OUT
