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
from rlhfkit.rollout import fastdecode  # noqa: E402
from rlhfkit.rollout.generate import _HFDecoder, sample  # noqa: E402


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


def check_static(model, prompts, tol: float) -> float:
    """The CUDA-graph decode steps (`start(static=True)`, `step_all`) against the transformers forward, 6 steps."""
    dev = next(model.parameters()).device
    fast, hf = fastdecode.for_model(model), _HFDecoder(model)
    ids, att = data_lib.pad_left(prompts, 0)
    ids, att = ids.to(dev), att.to(dev)
    worst = (fast.start(ids, att, 6, static=True).float() - hf.start(ids, att, 6).float()).abs().max().item()
    if not fast.static:
        return float("nan")  # rope asked at every step (dynamic scaling): the eager steps, checked above
    assert fast.graph is not None or dev.type != "cuda", "no CUDA graph was captured"
    toks = torch.tensor([3, 4, 5, 6][: ids.shape[0]], device=dev)
    for t in range(6):
        a, b = fast.step_all(toks).float(), hf.step(toks).float()
        worst = max(worst, (a - b).abs().max().item())
        toks = (toks + 1) % 60 + 3
    if worst > tol:
        raise SystemExit(f"static decode logits differ by {worst:.3g} > {tol}")
    return worst


def check_docs_attention(dev: str) -> str:
    """FlashAttention varlen (bf16, CUDA) against the padded-documents SDPA on the same documents, prompt-shared
    ones included: outputs and the gradients of q, k, v."""
    from rlhfkit.models import layout as layout_lib, modeling

    g = torch.Generator().manual_seed(0)
    items = [([1] * p, [[2] * c for c in cs]) for p, cs in ((37, [5, 90]), (3, [1, 2]), (120, [64, 7]), (9, [33]))]
    # build_packed over token runs: only the document structure matters here
    items = [(list(range(len(p))), [list(range(len(c))) for c in cs]) for p, cs in items[:3]]
    lay = layout_lib.build_packed(items)
    T = lay.tokens
    q, k, v = (torch.randn(1, 8, T, 64, generator=g).to(dev, torch.bfloat16).requires_grad_() for _ in range(3))
    docs = lay.packed.to(dev)
    outs = []
    for flash in (True, False):
        for x in (q, k, v):
            x.grad = None
        if flash:
            if not modeling._varlen_usable(q[0].transpose(0, 1), 0.0):
                return "varlen not usable here: " + str(modeling._varlen_fn())
            o = modeling.docs_attention(q, k, v, docs, 64 ** -0.5)
        else:
            qq, kk, vv = (x[0].transpose(0, 1) for x in (q, k, v))
            qq, kk, vv = (x.index_select(0, docs.doc_index) for x in (qq, kk, vv))
            o = modeling._padded_docs_attention(qq, kk, vv, docs, 64 ** -0.5, 0.0).index_select(0, docs.out_index)[None]
        (o.float() ** 2).sum().backward()
        outs.append([o.float()] + [x.grad.float() for x in (q, k, v)])
    worst = max((a - b).abs().max().item() / max(1.0, b.abs().max().item()) for a, b in zip(*outs))
    if worst > 0.05:
        raise SystemExit(f"varlen attention differs from padded SDPA by {worst:.3g} (relative)")
    return f"varlen vs padded SDPA: max relative difference {worst:.2e} (out, dq, dk, dv)"


def check_packed_logps(dev: str) -> str:
    """DPO's packed layout against its row layout on a small Llama: summed log-probs, fp32 and bf16 autocast."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.algorithms import dpo
    from rlhfkit.models import layout as layout_lib, logps

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, head_dim=64)).to(dev).eval()
    g = torch.Generator().manual_seed(1)
    items = [(torch.randint(3, 60, (p,), generator=g).tolist(), [torch.randint(3, 60, (c,), generator=g).tolist()
                                                                 for c in cs])
             for p, cs in ((12, (5, 30)), (40, (8, 3)), (3, (17, 17)))]
    res = []
    for prec in ("fp32", "bf16"):
        with torch.no_grad(), dpo.autocast_for(prec, torch.device(dev)):
            a = logps.run_layout(logps.SequenceLogprobs(model), layout_lib.build_packed(items), dev).float()
            b = logps.run_layout(logps.SequenceLogprobs(model), layout_lib.build_layout(items, 0), dev).float()
        tol = 1e-3 if prec == "fp32" else 0.5  # bf16: sums over ~30 tokens of bf16-rounded log-probs
        err = (a - b).abs().max().item()
        if err > tol:
            raise SystemExit(f"packed log-probs differ from rows ({prec}) by {err:.3g}: {a.tolist()} vs {b.tolist()}")
        res.append(f"{prec} {err:.2e}")
    return "packed vs row layout log-probs: " + ", ".join(res)


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
        static = check_static(model.float(), prompts, tol=1e-4)
        static_bf16 = check_static(model.to(torch.bfloat16), prompts, tol=0.1)
        print(f"{name}: fp32 max |dlogit| {fp32:.2e}, bf16 {bf16:.2e}, static/graph fp32 {static:.2e} "
              f"bf16 {static_bf16:.2e}, greedy tokens equal: ok")
    print(check_docs_attention(dev))
    print(check_packed_logps(dev))
    print(f"all checks passed on {dev}")


if __name__ == "__main__":
    main()
