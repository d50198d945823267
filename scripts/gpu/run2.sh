# On a CUDA machine: HH-RLHF reward models, rlhfkit vs TRL RewardTrainer, same MiniLM backbone, data, budget
# (STEPS, LEN, LR, SEEDS override the defaults); JSON lines into $OUT/rm_hh_gpu.jsonl.
source scripts/gpu/common.sh
hh_setup
S="--work /tmp/hh --model /tmp/minilm --steps ${STEPS:-800} --batch 16 --max-length ${LEN:-512} --lr ${LR:-5e-5}"
for seed in ${SEEDS:-42 43}; do
  python3 scripts/bench_rm_hh.py rlhfkit $S --seed $seed --results $OUT/rm_hh_gpu.jsonl > /tmp/r.log 2>&1 || tail -30 /tmp/r.log
  tail -1 /tmp/r.log
  python3 scripts/bench_rm_hh.py trl $S --seed $seed --results $OUT/rm_hh_gpu.jsonl > /tmp/t.log 2>&1 || tail -30 /tmp/t.log
  tail -1 /tmp/t.log
done
