#!/usr/bin/env python3
"""CUDA checks that CI (CPU only) cannot run: the sampler's decode path on a GPU, in fp32 and bf16.

    python scripts/gpu_check.py [cuda|cpu]  # exits non-zero on the first mismatch; prints one line per check

For every model of tests/test_fastdecode.py, on CUDA: fastdecode's logits equal the transformers forward's at every
step (fp32, rows dropped mid-generation; bf16 within bf16's resolution), and `sample` draws the same tokens on both
paths. The trainers themselves are exercised on CUDA by `rlhfkit bench ...` and `rlhfkit demo --scale toy` (see
docs/benchmarks.md, "On a GPU").
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhfkit import data as data_lib  # noqa: E402
from rlhfkit import fastdecode  # noqa: E402
from rlhfkit.generate import _HFDecoder, sample  # noqa: E402


def _test_models():
    spec = importlib.util.spec_from_file_location("tfd", ROOT / "tests" / "test_fastdecode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MODELS, mod.PROMPTS


def check_logits(model, prompts, tol: float) -> float:
    """Largest |fast - hf| logit difference over prefill and six decode steps, a row dropped after step 2."""
    dev = next(model.parameters()).device
    fast = fastdecode.for_model(model)
    assert fast is not None, fastdecode._why_unsupported(model)
    ids, att = data_lib.pad_left(prompts, 0)
    ids, att = ids.to(dev), att.to(dev)
    hf = _HFDecoder(model)
    worst = (fast.start(ids, att, 6).float() - hf.start(ids, att, 6).float()).abs().max().item()
    toks = torch.tensor([3, 4, 5, 6], device=dev)
    for t in range(6):
        if t == 2:
            keep = torch.tensor([0, 2, 3], device=dev)
            fast.keep(keep), hf.keep(keep)
            toks = toks[keep]
        a, b = fast.step(toks), hf.step(toks)
        worst = max(worst, (a.float() - b.float()).abs().max().item())
        toks = (toks + 1) % 60 + 3
    if worst > tol:
        raise SystemExit(f"logits differ by {worst:.3g} > {tol}")
    return worst


def check_sample(model, prompts) -> None:
    """Greedy decoding picks the same tokens through fastdecode and through transformers."""
    import os

    out = []
    for mode in ("", "hf"):
        os.environ["RLHFKIT_DECODE"] = mode
        out.append(sample(model, prompts, eos_id=2, pad_id=0, max_new_tokens=8, temperature=0.0).response_ids)
    os.environ.pop("RLHFKIT_DECODE")
    if out[0] != out[1]:
        raise SystemExit(f"greedy tokens differ: {out[0]} vs {out[1]}")


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # `cpu` runs the same checks here, to test this script
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to check")
    models, prompts = _test_models()
    print(f"device: {torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu'}, torch {torch.__version__}")
    for name, make in sorted(models.items()):
        model = make().to(dev)
        fp32 = check_logits(model, prompts, tol=1e-4)
        check_sample(model, prompts)
        bf16 = check_logits(model.to(torch.bfloat16), prompts, tol=0.1)
        print(f"{name}: fp32 max |dlogit| {fp32:.2e}, bf16 {bf16:.2e}, greedy tokens equal: ok")
    print(f"all checks passed on {dev}")


if __name__ == "__main__":
    main()
