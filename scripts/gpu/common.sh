# Sourced by run*.sh on the GPU machine (repo root, .gpu/ and .whl/ carried; see prepare.sh).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_DISABLED=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
RK="python3 -m rlhfkit.cli.main"

# the shared benchmark workload (make_tiny.py), in /tmp/bd
tiny_data() { python3 .gpu/make_tiny.py --out /tmp/bd > /dev/null || exit 1; }

# HH-RLHF in /tmp/hh (arguments go to `bench_rm_hh.py prepare`) and MiniLM widened back to fp32 in /tmp/minilm
hh_setup() {
  mkdir -p /tmp/shared/data/hh_rlhf && cp .gpu/hh/* /tmp/shared/data/hh_rlhf/ && export RLHFKIT_SHARED=/tmp/shared
  python3 - <<'PY' || exit 1
import shutil
from safetensors.torch import load_file, save_file
shutil.copytree(".gpu/minilm16", "/tmp/minilm", dirs_exist_ok=True)
sd = load_file("/tmp/minilm/model.safetensors")
save_file({k: v.float().contiguous() for k, v in sd.items()}, "/tmp/minilm/model.safetensors", metadata={"format": "pt"})
PY
  python3 scripts/bench_rm_hh.py prepare --work /tmp/hh "$@" || exit 1
}
