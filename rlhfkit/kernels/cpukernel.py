"""The compiled loops rlhfkit carries, for fp32 on x86-64 CPUs (csrc/):
- `linear`: a decode step's matmul with few rows. At a decode step's 1-8 rows, MKL's sgemm reads the weights at
  5-8 GB/s; `csrc/decode_matmul.c` streams each weight row once per 8 input rows with the accumulators in
  registers. On the 2-core benchmark machine the 17 matmuls of a batch-8 step of the 5 M-parameter benchmark model
  took 1.4 ms, against 3.2-3.6 ms for the best torch form (docs/benchmarks.md).
- `swiglu_*`, `rmsnorm_*`: a training step's SwiGLU and RMSNorm, forward and backward, one pass each
  (`csrc/train_elementwise.c`; wrapped for autograd in `rlhfkit/kernels/fusedops.py`).
- `logsumexp_rows`, `logsoftmax_grad_rows_`: an LM head's log-softmax forward and backward passes over the logits
  (`csrc/train_elementwise.c`; used by `models.logps.linear_logprobs`).
- `block_attention_*`: attention under a padding-free layout's block masks, forward and backward, computing only
  the 16 x 16 score tiles the mask lets through (`csrc/block_attention.c`; wrapped in `rlhfkit/kernels/fusedops.py`).

The C files are compiled together on first use with the system's C compiler (`$CC`, else `cc` or `gcc`) into
`$XDG_CACHE_HOME/rlhfkit/` (default `~/.cache/rlhfkit/`), named by a hash of the sources, the flags and the
compiler, and loaded with ctypes; nothing is compiled at install time. They are used only where all of these hold,
and otherwise `available()` is False, `why_unavailable()` says why, and callers use torch:
- Linux on x86-64 with AVX2 and FMA;
- torch's CPU parallel backend is OpenMP, and the kernel's OpenMP runtime is torch's own (the kernel's threads are
  then torch's threads, so `torch.set_num_threads` governs both and the two never compete for cores);
- a C compiler with OpenMP (and glibc's vector maths, libmvec) builds it, and its outputs match torch's on random
  problems at load;
- `RLHFKIT_CPU_KERNEL` is not set to 0.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCES = [Path(__file__).with_name("csrc") / name
           for name in ("decode_matmul.c", "train_elementwise.c", "block_attention.c")]
HEADERS = [Path(__file__).with_name("csrc") / "vexp.h"]  # part of the build's cache key
FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]  # no FMA contraction: a
# loop's vector body and scalar tail then round alike
LIBS = ["-lmvec"]  # glibc's vector expf, for the SwiGLU loops
log = logging.getLogger(__name__)

_fn = None  # the loaded C library's functions, once loaded (_fn: the decode matmul; _lib: all of them)
_lib = None
_why: str | None = None  # why it is not available, once decided


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlhfkit"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _openmp_libraries() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process."""
    names = ("libgomp", "libiomp", "libomp")
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[-1] for line in lines if any(n in line.rsplit("/", 1)[-1] for n in names)}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    text = b"".join(src.read_bytes() for src in SOURCES + HEADERS)
    key = hashlib.sha256(text + " ".join([compiler, *FLAGS, *LIBS, version]).encode()).hexdigest()[:16]
    out = cache_dir() / f"cpukernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: another process may be building the same file at the same time.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", tmp, *LIBS], capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {', '.join(map(str, SOURCES))}: {res.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _self_test() -> str | None:
    g = torch.Generator().manual_seed(0)
    for rows, n, k, bias in ((3, 37, 29, True), (8, 64, 256, False), (11, 16, 40, True)):
        x, w, r = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g), torch.randn(rows, n, generator=g)
        b = torch.randn(n, generator=g) if bias else None
        if not torch.allclose(linear(x, w, b, r), F.linear(x, w, b) + r, rtol=1e-5, atol=1e-5):
            return f"self-test mismatch against F.linear at rows={rows}, n={n}, k={k}"
        if not torch.allclose(linear(x, w, b, norm_eps=1e-5), F.linear(F.rms_norm(x, (k,), None, 1e-5), w, b),
                              rtol=1e-5, atol=1e-5):
            return f"self-test mismatch against F.rms_norm + F.linear at rows={rows}, n={n}, k={k}"
    for rows, width in ((5, 37), (64, 1000)):  # odd sizes: the loops' vector tails
        a, u, d = (torch.randn(rows, width, generator=g) * 4 for _ in range(3))
        sig = torch.sigmoid(a)
        if not (torch.allclose(swiglu_forward(a, u), F.silu(a) * u, rtol=1e-5, atol=1e-5) and all(
                torch.allclose(got, want, rtol=1e-4, atol=1e-4) for got, want in
                zip(swiglu_backward(a, u, d), (d * u * sig * (1 + a * (1 - sig)), d * F.silu(a))))):
            return f"self-test mismatch against torch's SwiGLU at {rows} x {width}"
        x, w = a.requires_grad_(), (1 + 0.1 * u[0]).requires_grad_()
        want = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
        want.backward(d)
        y, rstd = rmsnorm_forward(x.detach(), w.detach(), 1e-6)
        dx, dw = rmsnorm_backward(x.detach(), w.detach(), rstd, d)
        if not (torch.allclose(y, want, rtol=1e-5, atol=1e-5) and torch.allclose(dx, x.grad, rtol=1e-4, atol=1e-4)
                and torch.allclose(dw, w.grad, rtol=1e-4, atol=1e-3)):
            return f"self-test mismatch against transformers' RMSNorm at {rows} x {width}"
    for rows, V in ((3, 37), (16, 2048)):
        z = torch.randn(rows, V, generator=g) * 5
        labels = torch.randint(0, V, (rows,), generator=g)
        gr = torch.randn(rows, generator=g)
        logz = logsumexp_rows(z)
        want = torch.softmax(z, -1) * -gr[:, None]
        want[torch.arange(rows), labels] += gr
        if not (torch.allclose(logz, torch.logsumexp(z, -1), rtol=1e-5, atol=1e-5)
                and torch.allclose(logsoftmax_grad_rows_(z.clone(), logz, gr, labels), want, rtol=1e-5, atol=1e-6)):
            return f"self-test mismatch against torch's log-softmax at {rows} x {V}"
    return _block_attention_self_test(g)


def _block_attention_self_test(g: torch.Generator) -> str | None:
    """Two rows (odd sizes: partial tiles) under random masks that keep the diagonal, GQA with 2 groups, against
    SDPA row by row: outputs and the three gradients, without and with the kernel's own rotary embedding."""
    heads, kv_heads, d, lens = 4, 2, 32, (37, 21)
    T = sum(lens)
    q = torch.randn(1, T, heads, d, generator=g).transpose(1, 2)
    k, v = (torch.randn(1, kv_heads, T, d, generator=g) for _ in range(2))
    masks = [(torch.rand(n, n, generator=g) < 0.3) | torch.eye(n, dtype=torch.bool) for n in lens]
    rows = [(0, lens[0], masks[0]), (lens[0], T, masks[1])]
    dout = torch.randn(1, T, heads, d, generator=g)
    angle = torch.rand(1, T, d // 2, generator=g) * 6.3
    cos, sin = torch.cat([angle, angle], -1).cos(), torch.cat([angle, angle], -1).sin()
    for rope in (None, (cos, sin)):
        out, P = block_attention_forward(q, k, v, rows, 0.3, need_p=True, rope=rope)
        grads = block_attention_backward(q, k, v, rows, 0.3, out, P, dout, rope=rope)
        qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
        qx, kx = qr, kr
        if rope is not None:  # q cos + rotate_half(q) sin, as transformers applies it
            qx, kx = ((x * cos[:, None]) + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin[:, None]
                      for x in (qr, kr))
        want = torch.cat([F.scaled_dot_product_attention(qx[:, :, a:b], kx[:, :, a:b].repeat_interleave(2, 1),
                                                         vr[:, :, a:b].repeat_interleave(2, 1), attn_mask=m, scale=0.3)
                          for a, b, m in rows], 2).transpose(1, 2)
        want.backward(dout)
        what = "with" if rope else "without"
        if not torch.allclose(out, want, rtol=1e-4, atol=1e-5):
            return f"self-test mismatch against SDPA in the block attention forward ({what} RoPE)"
        if not all(torch.allclose(got, ref.grad, rtol=1e-4, atol=1e-4) for got, ref in zip(grads, (qr, kr, vr))):
            return f"self-test mismatch against SDPA in the block attention backward ({what} RoPE)"
    return None


def _load() -> None:
    global _fn, _lib, _why
    if os.environ.get("RLHFKIT_CPU_KERNEL", "1").lower() in ("0", "off", "false", "no"):
        _why = "RLHFKIT_CPU_KERNEL=0"
        return
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        _why = f"not Linux on x86-64 ({sys.platform}, {platform.machine()})"
        return
    if not {"avx2", "fma"} <= _cpu_flags():
        _why = "the CPU lacks AVX2 or FMA"
        return
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        _why = "torch's CPU parallel backend is not OpenMP"
        return
    compiler = _compiler()
    if compiler is None:
        _why = "no C compiler (set CC, or install gcc)"
        return
    before = _openmp_libraries()
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _why = f"could not build or load {', '.join(src.name for src in SOURCES)}: {e}"
        return
    if len(_openmp_libraries()) > max(1, len(before)):
        # The kernel brought its own OpenMP runtime: its threads would compete with torch's for the cores.
        _why = f"the kernel's OpenMP runtime is not torch's ({sorted(_openmp_libraries())})"
        return
    fn = lib.rlhfkit_linear_few_rows
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_float, ctypes.c_int]
    p, n_, i_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for name, args, res in (("rlhfkit_swiglu_forward", [p, p, p, n_, i_], None),
                            ("rlhfkit_swiglu_backward", [p, p, p, p, p, n_, i_], None),
                            ("rlhfkit_rmsnorm_forward", [p, p, p, p, n_, n_, ctypes.c_float, i_], None),
                            ("rlhfkit_rmsnorm_backward", [p, p, p, p, p, p, n_, n_, i_], ctypes.c_int),
                            ("rlhfkit_logsumexp_rows", [p, p, n_, n_, i_], None),
                            ("rlhfkit_logsoftmax_grad_rows", [p, p, p, p, n_, n_, i_], None),
                            ("rlhfkit_block_attention_forward",
                             [p, n_, n_, p, n_, n_, p, n_, n_, n_, n_, n_, ctypes.c_float, n_, p, p, p, p, p, p, p, p,
                              i_],
                             ctypes.c_int),
                            ("rlhfkit_block_attention_backward",
                             [p, n_, n_, p, n_, n_, p, n_, n_, n_, n_, n_, ctypes.c_float, n_, p, p, p, p, p, p, p, p,
                              p, p, p, p, i_], ctypes.c_int)):
        f = getattr(lib, name)
        f.argtypes, f.restype = args, res
    _fn, _lib = fn, lib
    # The first use may come under no_grad, inference_mode or inside an autograd Function's forward; the self-test
    # needs autograd for its reference gradients.
    with torch.inference_mode(False), torch.enable_grad():
        _why = _self_test()
    if _why:
        _fn = _lib = None


def available() -> bool:
    if _fn is None and _why is None:
        _load()
        if _why:
            log.info("rlhfkit CPU decode kernel not used: %s", _why)
    return _fn is not None


def why_unavailable() -> str | None:
    available()
    return _why


def usable(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, add: torch.Tensor | None = None) -> bool:
    """Whether `linear(x, w, b)` can run: fp32 CPU tensors, the weights contiguous, and no gradient to record (the
    C loop is invisible to autograd; a model's parameters qualify under torch.no_grad or inference_mode). `add`, when
    given, must have the output's shape."""
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b, add))
    if add is not None and (add.dtype != torch.float32 or add.shape != (*x.shape[:-1], w.shape[0])):
        return False
    return (x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and w.dim() == 2
            and w.is_contiguous() and x.shape[-1] == w.shape[1] and not tracked
            and (b is None or (b.dtype == torch.float32 and b.shape == (w.shape[0],) and b.is_contiguous()))
            and available())


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, add: torch.Tensor | None = None,
           norm_eps: float | None = None) -> torch.Tensor:
    """F.linear(x, w, b) + add by the C loop (call `usable` first), the additions in that order. With `norm_eps`,
    x's rows are RMS-normalised first (F.rms_norm(x, (K,), None, norm_eps); a norm weight belongs folded into w).
    Each output row depends only on its own input row."""
    K, N = x.shape[-1], w.shape[0]
    x2 = x.reshape(-1, K).contiguous()
    add2 = None if add is None else add.reshape(-1, N).contiguous()
    y = torch.empty(x2.shape[0], N, dtype=x.dtype)
    _fn(x2.data_ptr(), x2.shape[0], w.data_ptr(), None if b is None else b.data_ptr(),
        None if add2 is None else add2.data_ptr(), y.data_ptr(), N, K, -1.0 if norm_eps is None else norm_eps,
        torch.get_num_threads())
    return y.view(*x.shape[:-1], N)


# ----------------------------------------------------------------------------------------------- training kernels
# Thin calls into csrc/train_elementwise.c for fp32 CPU tensors (call `available()` first); each returns new
# tensors and never records autograd (rlhfkit/kernels/fusedops.py wraps them in autograd Functions).
def swiglu_forward(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u."""
    g, u = g.contiguous(), u.contiguous()
    out = torch.empty_like(g)
    _lib.rlhfkit_swiglu_forward(g.data_ptr(), u.data_ptr(), out.data_ptr(), g.numel(), torch.get_num_threads())
    return out


def swiglu_backward(g: torch.Tensor, u: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dg, d/du) of silu(g) * u, given the output's gradient."""
    g, u, dout = g.contiguous(), u.contiguous(), dout.contiguous()
    dg, du = torch.empty_like(g), torch.empty_like(u)
    _lib.rlhfkit_swiglu_backward(g.data_ptr(), u.data_ptr(), dout.data_ptr(), dg.data_ptr(), du.data_ptr(),
                                 g.numel(), torch.get_num_threads())
    return dg, du


def rmsnorm_forward(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w * x / sqrt(mean(x^2, -1) + eps), the per-row 1 / sqrt(...)) over x's last dimension."""
    x, w = x.contiguous(), w.contiguous()
    H = x.shape[-1]
    y, rstd = torch.empty_like(x), torch.empty(x.numel() // H, dtype=torch.float32)
    _lib.rlhfkit_rmsnorm_forward(x.data_ptr(), w.data_ptr(), y.data_ptr(), rstd.data_ptr(), x.numel() // H, H, eps,
                                 torch.get_num_threads())
    return y, rstd


def rmsnorm_backward(x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor,
                     dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dw) of `rmsnorm_forward`, given the output's gradient and the saved rstd."""
    x, w, dy = x.contiguous(), w.contiguous(), dy.contiguous()
    H = x.shape[-1]
    dx, dw = torch.empty_like(x), torch.empty_like(w)
    if _lib.rlhfkit_rmsnorm_backward(x.data_ptr(), w.data_ptr(), rstd.data_ptr(), dy.data_ptr(), dx.data_ptr(),
                                     dw.data_ptr(), x.numel() // H, H, torch.get_num_threads()) != 0:
        raise MemoryError("rlhfkit_rmsnorm_backward could not allocate its per-thread sums")
    return dx, dw


def logsumexp_rows(z: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp(z, -1) of a contiguous fp32 (rows, V) tensor, in two reads of z and no (rows, V) temporary."""
    z = z.contiguous()
    out = torch.empty(z.shape[0], dtype=torch.float32)
    _lib.rlhfkit_logsumexp_rows(z.data_ptr(), out.data_ptr(), z.shape[0], z.shape[1], torch.get_num_threads())
    return out


def logsoftmax_grad_rows_(z: torch.Tensor, logz: torch.Tensor, g: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """In place on contiguous fp32 logits z (rows, V), and returned: the gradient of sum_r g[r] *
    log_softmax(z[r])[labels[r]], i.e. g[r] * (onehot(labels[r]) - softmax(z[r])), in one pass."""
    if not z.is_contiguous():
        raise ValueError("logsoftmax_grad_rows_ needs contiguous logits (it writes them in place)")
    logz, g, labels = logz.float().contiguous(), g.float().contiguous(), labels.long().contiguous()
    _lib.rlhfkit_logsoftmax_grad_rows(z.data_ptr(), logz.data_ptr(), g.data_ptr(), labels.data_ptr(), z.shape[0],
                                      z.shape[1], torch.get_num_threads())
    return z


# ----------------------------------------------------------------------------------------------- block attention
# rows: (start, end, mask) per row of a padding-free layout forward: tokens [start, end) of the sequence attend within
# themselves where the (end - start, end - start) bool mask is True (any strides with a contiguous last dimension).
def _row_args(rows: list[tuple[int, int, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    for _, _, m in rows:
        if m.dtype != torch.bool or m.stride(-1) != 1:
            raise ValueError("block attention masks must be bool with a contiguous last dimension")
    return (torch.tensor([a for a, _, _ in rows]), torch.tensor([b - a for a, b, _ in rows]),
            torch.tensor([m.data_ptr() for _, _, m in rows]), torch.tensor([m.stride(-2) for _, _, m in rows]))


def _qkv_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list:
    """(pointer, token stride, head stride) of each (1, heads, T, d) tensor, whose channels must be contiguous."""
    out = []
    for t in (q, k, v):
        if t.dtype != torch.float32 or t.stride(-1) != 1:
            raise ValueError("block attention needs fp32 q, k, v with contiguous channels")
        out += [t.data_ptr(), t.stride(2), t.stride(1)]
    return out


def _rope_args(rope: tuple[torch.Tensor, torch.Tensor] | None, T: int, d: int) -> tuple:
    """Pointers to cos and sin as (T, d) contiguous fp32, or (None, None) without RoPE; and the tensors to keep."""
    if rope is None:
        return (None, None), ()
    cos, sin = (t.reshape(T, d).to(torch.float32).contiguous() for t in rope)
    return (cos.data_ptr(), sin.data_ptr()), (cos, sin)


def block_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: list, scale: float,
                            need_p: bool, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(scale * q k^T under each row's mask) v for (1, heads, T, d) q and (1, kv_heads, T, d) k, v (d a
    multiple of 16, heads a multiple of kv_heads); returns the output (1, T, heads, d) and, with `need_p`, the
    attention probabilities that `block_attention_backward` needs. With `rope` = (cos, sin), each (1, T, d), q and k
    are rotated first, exactly as transformers' apply_rotary_pos_emb does."""
    _, H, T, d = q.shape
    starts, lens, ptrs, strides = _row_args(rows)
    (cos_p, sin_p), keep = _rope_args(rope, T, d)
    npad = (lens + 15) // 16 * 16
    P = torch.empty(int(H * (lens * npad).sum()), dtype=torch.float32)
    out = torch.zeros(1, T, H, d, dtype=torch.float32)
    if _lib.rlhfkit_block_attention_forward(*_qkv_args(q, k, v), H, k.shape[1], d, scale, len(rows),
                                            starts.data_ptr(), lens.data_ptr(), ptrs.data_ptr(), strides.data_ptr(),
                                            out.data_ptr(), P.data_ptr(), cos_p, sin_p, torch.get_num_threads()) != 0:
        raise MemoryError("rlhfkit_block_attention_forward could not allocate its scratch memory")
    del keep
    return out, (P if need_p else None)


def block_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: list, scale: float,
                             out: torch.Tensor, P: torch.Tensor, dout: torch.Tensor,
                             rope: tuple[torch.Tensor, torch.Tensor] | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv), shaped as q, k, v, of `block_attention_forward`'s output, given its gradient (with
    `rope`, the gradients of the q and k before their rotation)."""
    _, H, T, d = q.shape
    Hkv = k.shape[1]
    starts, lens, ptrs, strides = _row_args(rows)
    (cos_p, sin_p), keep = _rope_args(rope, T, d)
    dout = dout.contiguous()
    dq = torch.zeros(1, T, H, d, dtype=torch.float32)
    dk, dv = torch.zeros(1, T, Hkv, d, dtype=torch.float32), torch.zeros(1, T, Hkv, d, dtype=torch.float32)
    if _lib.rlhfkit_block_attention_backward(*_qkv_args(q, k, v), H, Hkv, d, scale, len(rows), starts.data_ptr(),
                                             lens.data_ptr(), ptrs.data_ptr(), strides.data_ptr(), out.data_ptr(),
                                             P.data_ptr(), dout.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                                             dv.data_ptr(), cos_p, sin_p, torch.get_num_threads()) != 0:
        raise MemoryError("rlhfkit_block_attention_backward could not allocate its scratch memory")
    del keep
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
