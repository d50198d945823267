# GPU call 3: after the device fixes: toy demo on CUDA, dpo/kto with precomputed reference; HH with helpful-base held out.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_DISABLED=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
RK="python3 -m rlhfkit.cli"
python3 .gpu/make_tiny.py --out /tmp/bd > /dev/null || exit 1
D=/tmp/bd; C="--steps 20 --batch 8 --max-length 256 --seed 42 --threads 2"
$RK bench dpo --model $D/small --data $D/preference.jsonl $C --loss sigmoid --precompute-ref true --ref-cache-dir /tmp/rc 2>/tmp/e1 | tee -a $OUT/bench_gpu2.jsonl || tail -20 /tmp/e1
$RK bench kto --model $D/small --data $D/preference.jsonl $C --precompute-ref true --ref-cache-dir /tmp/rc 2>/tmp/e2 | tee -a $OUT/bench_gpu2.jsonl || tail -20 /tmp/e2
( time $RK demo --scale toy --out /tmp/demo-toy ) > $OUT/demo_toy.log 2>&1 || { echo "toy demo FAILED"; tail -30 $OUT/demo_toy.log; }
tail -4 $OUT/demo_toy.log; cp /tmp/demo-toy/summary.json $OUT/demo_toy_summary.json 2>/dev/null
mkdir -p /tmp/shared/data/hh_rlhf && cp .gpu/hh/* /tmp/shared/data/hh_rlhf/ && export RLHFKIT_SHARED=/tmp/shared
python3 - <<'PY' || exit 1
import shutil
from safetensors.torch import load_file, save_file
shutil.copytree(".gpu/minilm16", "/tmp/minilm", dirs_exist_ok=True)
sd = load_file("/tmp/minilm/model.safetensors")
save_file({k: v.float().contiguous() for k, v in sd.items()}, "/tmp/minilm/model.safetensors", metadata={"format": "pt"})
PY
python3 scripts/bench_rm_hh.py prepare --work /tmp/hh --train-subsets harmless-base,helpful-online,helpful-rejection-sampled --eval-subset helpful-base || exit 1
S="--work /tmp/hh --model /tmp/minilm --steps 800 --batch 16 --max-length 512 --lr 5e-5 --seed 42"
( time python3 scripts/bench_rm_hh.py rlhfkit $S --results $OUT/rm_hh_gpu_hb.jsonl ) > /tmp/r.log 2>&1 || tail -30 /tmp/r.log
tail -4 /tmp/r.log
( time python3 scripts/bench_rm_hh.py trl $S --results $OUT/rm_hh_gpu_hb.jsonl ) > /tmp/t.log 2>&1 || tail -30 /tmp/t.log
tail -4 /tmp/t.log
