# GPU call 2: HH-RLHF reward models, rlhfkit vs TRL RewardTrainer, same MiniLM backbone, data, budget.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_DISABLED=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/shared/data/hh_rlhf && cp .gpu/hh/* /tmp/shared/data/hh_rlhf/ && export RLHFKIT_SHARED=/tmp/shared
python3 - <<'PY' || exit 1
import shutil, torch
from safetensors.torch import load_file, save_file
shutil.copytree(".gpu/minilm16", "/tmp/minilm", dirs_exist_ok=True)
sd = load_file("/tmp/minilm/model.safetensors")
save_file({k: v.float().contiguous() for k, v in sd.items()}, "/tmp/minilm/model.safetensors", metadata={"format": "pt"})
PY
python3 scripts/bench_rm_hh.py prepare --work /tmp/hh || exit 1
S="--work /tmp/hh --model /tmp/minilm --steps ${STEPS:-800} --batch 16 --max-length ${LEN:-512} --lr ${LR:-5e-5}"
for seed in ${SEEDS:-42 43}; do
  python3 scripts/bench_rm_hh.py rlhfkit $S --seed $seed --results $OUT/rm_hh_gpu.jsonl > /tmp/r.log 2>&1 || tail -30 /tmp/r.log
  tail -1 /tmp/r.log
  python3 scripts/bench_rm_hh.py trl $S --seed $seed --results $OUT/rm_hh_gpu.jsonl > /tmp/t.log 2>&1 || tail -30 /tmp/t.log
  tail -1 /tmp/t.log
done
