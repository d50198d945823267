"""Run ../shared/bench/trl_bench.py (carried as .gpu/trl_bench.py) in this process, then report the CUDA memory it
peaked at, which trl_bench.py does not: `python3 scripts/gpu/trl_peak.py TRAINER --gpu ...` prints trl_bench's JSON
line with `peak_gpu_mib` added (torch.cuda.max_memory_allocated, the same counter `rlhfkit bench` reads)."""
import json
import runpy
import sys

import torch

sys.argv = [".gpu/trl_bench.py", *sys.argv[1:]]
real_stdout, lines = sys.stdout, []


class Tee:
    def write(self, s):
        lines.append(s)
        return real_stdout.write(s)

    def flush(self):
        real_stdout.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding ...: the real stream's
        return getattr(real_stdout, name)


sys.stdout = Tee()
try:
    runpy.run_path(".gpu/trl_bench.py", run_name="__main__")
except SystemExit as e:  # trl_bench ends with sys.exit
    if e.code not in (None, 0):
        raise
finally:
    sys.stdout = real_stdout
rec = json.loads([x for x in "".join(lines).splitlines() if x.startswith("{")][-1])
rec["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
print(json.dumps(rec))
