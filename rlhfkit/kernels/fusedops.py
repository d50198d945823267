"""Fused forward + backward on CPU for the elementwise parts of a Llama-family decoder (SwiGLU, RMSNorm) and for
the padding-free layout forwards' block-masked attention (`BlockAttention`, used by `modeling`'s layout attention).

`fuse(model)` gives the MLP and RMSNorm modules of the families in `FAMILIES` a forward that runs their elementwise
math as one C pass forward and one backward (`cpukernel.swiglu_*`, `cpukernel.rmsnorm_*`), as autograd Functions.
The linear layers are still the model's own modules (so LoRA, hooks and DDP see them). Everything else, and every
call whose tensors are not fp32 on the CPU (a GPU, autocast to bf16), runs the module's own transformers forward.
Without the compiled kernels (`cpukernel.available()` False, e.g. `RLHFKIT_CPU_KERNEL=0`) nothing is changed.

Why (docs/benchmarks.md, "fused SwiGLU and RMSNorm"): eager torch runs silu(g) * u as two ops forward and three backward, and
transformers' RMSNorm as six forward and more backward, each a pass over a (tokens, width) tensor. In a DPO step of
the benchmark model, swapping in the fused versions saved ~11 ms of ~335 (paired timings). The
results equal transformers' to fp32 rounding (tests/test_fusedops.py, per family).

`BlockAttention`: a layout row's mask lets through ~36% of its scores on the DPO benchmark; SDPA under
a mask computes all of them. The C kernel computes only the 16 x 16 tiles with an allowed entry: a benchmark batch's
attention over its 4 layers, forward + backward, took ~19 ms instead of ~44 ms (paired timings, docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import importlib
import types

import torch

from rlhfkit.kernels import cpukernel


class SwiGLU(torch.autograd.Function):
    """silu(g) * u (Shazeer 2020), fp32 CPU tensors of one shape."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, u)
        return cpukernel.swiglu_forward(g, u)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        g, u = ctx.saved_tensors
        return cpukernel.swiglu_backward(g, u, dout)


class RMSNorm(torch.autograd.Function):
    """w * x / sqrt(mean(x^2, -1) + eps) (Zhang and Sennrich 2019), fp32 CPU tensors; w of x's last dimension."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = cpukernel.rmsnorm_forward(x, w, eps)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w, rstd = ctx.saved_tensors
        dx, dw = cpukernel.rmsnorm_backward(x, w, rstd, dy)
        return dx, dw, None


class BlockAttention(torch.autograd.Function):
    """Attention of (1, heads, T, d) q and (1, kv_heads, T, d) k, v, where each row (start, end, mask) of the
    sequence attends within itself under its (n, n) bool mask; returns (1, T, heads, d), as transformers' SDPA
    attention does. Given cos and sin ((1, T, d) each), q and k are the projections before the rotary embedding and
    the kernel applies it (as transformers' apply_rotary_pos_emb does, to the same values). See
    `cpukernel.block_attention_forward` for what the inputs must be (`block_attention_usable`)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: list, scale: float,
                cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> torch.Tensor:
        rope = None if cos is None else (cos.detach(), sin.detach())
        need_grad = any(ctx.needs_input_grad[:3])
        out, P = cpukernel.block_attention_forward(q, k, v, rows, scale, need_p=need_grad, rope=rope)
        if need_grad:
            ctx.save_for_backward(q, k, v, out, P)
            ctx.rows, ctx.scale, ctx.rope = rows, scale, rope  # the masks stay referenced until the backward
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: torch.Tensor):
        q, k, v, out, P = ctx.saved_tensors
        grads = cpukernel.block_attention_backward(q, k, v, ctx.rows, ctx.scale, out, P, dout, rope=ctx.rope)
        return (*grads, None, None, None, None)


# The kernel keeps each layer's attention probabilities for the backward (heads x sum over rows of n x n floats);
# beyond this per layer call, SDPA (which keeps O(n) per row) is used instead. The benchmark's batches need ~5 MiB.
P_LIMIT_BYTES = 64 << 20


def block_attention_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float,
                           rows: list | None = None) -> bool:
    """Whether `BlockAttention` can run these inputs: fp32 CPU tensors with contiguous channels, a head dim that is a
    multiple of 16, whole groups of query heads per key/value head, no dropout, the compiled kernels loaded, and
    (given the rows, (start, end, ...)) probabilities that fit in P_LIMIT_BYTES."""
    if rows is not None and 4 * q.shape[1] * sum((b - a) * -(-(b - a) // 16) * 16 for a, b, *_ in rows) > P_LIMIT_BYTES:
        return False
    return (_fp32_cpu(q, k, v) and q.shape[-1] % 16 == 0 and all(t.stride(-1) == 1 for t in (q, k, v))
            and q.shape[1] % k.shape[1] == 0 and k.shape == v.shape and not dropout and cpukernel.available())


def _fp32_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP.forward: down_proj(act(gate_proj(x)) * up_proj(x)), the product fused when act is SiLU."""
    g, u = self.gate_proj(x), self.up_proj(x)
    h = SwiGLU.apply(g, u) if _fp32_cpu(g, u) else self.act_fn(g) * u
    return self.down_proj(h)


def _norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm.forward, fused for fp32 CPU input and weight; otherwise the class's own forward."""
    if _fp32_cpu(x, self.weight):
        return RMSNorm.apply(x, self.weight, self.variance_epsilon)
    return type(self).forward(self, x)


# model_type -> transformers' class-name prefix: the families whose MLP and RMSNorm compute exactly the math above
FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


@functools.cache
def _family_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(MLP classes, RMSNorm classes) of `FAMILIES`."""
    mods = {f: importlib.import_module(f"transformers.models.{f}.modeling_{f}") for f in FAMILIES}
    return (tuple(getattr(mods[f], p + "MLP") for f, p in FAMILIES.items()),
            tuple(getattr(mods[f], p + "RMSNorm") for f, p in FAMILIES.items()))


def fuse(model: torch.nn.Module) -> int:
    """Switch the model's SwiGLU MLPs and RMSNorms to the fused forward (see the module docstring); returns how many
    modules were switched (0 without the compiled kernels or for other families). Idempotent; weights, state dicts
    and saved checkpoints are unchanged."""
    if getattr(getattr(model, "config", None), "model_type", None) not in FAMILIES or not cpukernel.available():
        return 0
    from transformers.activations import SiLUActivation

    mlps, norms = _family_classes()
    n = 0
    for module in model.modules():
        if type(module) in mlps and isinstance(module.act_fn, (SiLUActivation, torch.nn.SiLU)):
            module.forward = types.MethodType(_mlp_forward, module)
            n += 1
        elif type(module) in norms:
            module.forward = types.MethodType(_norm_forward, module)
            n += 1
    return n
