# On a CUDA machine: dpo/kto benches with a precomputed reference, the toy demo, and HH-RLHF reward models with
# helpful-base held out (rlhfkit vs TRL); results into $OUT.
source scripts/gpu/common.sh
tiny_data
D=/tmp/bd; C="--steps 20 --batch 8 --max-length 256 --seed 42 --threads 2"
$RK bench dpo --model $D/small --data $D/preference.jsonl $C --loss sigmoid --precompute-ref true --ref-cache-dir /tmp/rc 2>/tmp/e1 | tee -a $OUT/bench_gpu2.jsonl || tail -20 /tmp/e1
$RK bench kto --model $D/small --data $D/preference.jsonl $C --precompute-ref true --ref-cache-dir /tmp/rc 2>/tmp/e2 | tee -a $OUT/bench_gpu2.jsonl || tail -20 /tmp/e2
( time $RK demo --scale toy --out /tmp/demo-toy ) > $OUT/demo_toy.log 2>&1 || { echo "toy demo FAILED"; tail -30 $OUT/demo_toy.log; }
tail -4 $OUT/demo_toy.log; cp /tmp/demo-toy/summary.json $OUT/demo_toy_summary.json 2>/dev/null
hh_setup --train-subsets harmless-base,helpful-online,helpful-rejection-sampled --eval-subset helpful-base
S="--work /tmp/hh --model /tmp/minilm --steps 800 --batch 16 --max-length 512 --lr 5e-5 --seed 42"
( time python3 scripts/bench_rm_hh.py rlhfkit $S --results $OUT/rm_hh_gpu_hb.jsonl ) > /tmp/r.log 2>&1 || tail -30 /tmp/r.log
tail -4 /tmp/r.log
( time python3 scripts/bench_rm_hh.py trl $S --results $OUT/rm_hh_gpu_hb.jsonl ) > /tmp/t.log 2>&1 || tail -30 /tmp/t.log
tail -4 /tmp/t.log
