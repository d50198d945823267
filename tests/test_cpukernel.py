"""cpukernel: the C loop for a decode step's matmul is F.linear, row by row, on every shape; it falls back cleanly.

The bound used below is the standard one for a floating-point dot product: summing K fp32 products in any order is
within K * 2^-24 * sum_k |x_k w_k| of the exact sum (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
A dropped, doubled or misplaced product misses it by the size of a product, far above it.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.kernels import cpukernel

needs_kernel = pytest.mark.skipif(not cpukernel.available(), reason=f"no CPU kernel here: {cpukernel.why_unavailable()}")


def _check_against_float64(x, w, b, y):
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    bound = x.shape[-1] * 2.0 ** -24 * (x.double().abs() @ w.double().abs().T) + 1e-30
    if b is not None:
        bound = bound + 2.0 ** -24 * (exact.abs() + b.double().abs())  # the final bias addition rounds once
    assert ((y.double() - exact).abs() <= bound).all()


@needs_kernel
@pytest.mark.parametrize("rows", [1, 5, 8, 9, 17])
@pytest.mark.parametrize("k", [1, 7, 8, 29, 256])
def test_matches_exact_products_within_the_rounding_bound(rows, k):
    g = torch.Generator().manual_seed(rows * 1000 + k)
    for n in (1, 3, 64):
        x, w, b = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        for bias in (None, b):
            y = cpukernel.linear(x, w, bias)
            assert y.shape == (rows, n) and y.dtype == torch.float32
            _check_against_float64(x, w, bias, y)
            torch.testing.assert_close(y, F.linear(x, w, bias), atol=1e-4, rtol=1e-5)


@needs_kernel
def test_each_row_is_independent_of_the_batch_and_thread_count():
    """Row i of a 17-row call (third tile, threads splitting the outputs) equals row i computed alone, bit for bit."""
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(17, 3, 40, generator=g), torch.randn(96, 40, generator=g), torch.randn(96, generator=g)
    y = cpukernel.linear(x, w, b)
    assert y.shape == (17, 3, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for i in (0, 8, 16):
            assert torch.equal(cpukernel.linear(x[i], w, b), y[i])
    finally:
        torch.set_num_threads(threads)


def test_usable_only_for_plain_fp32_cpu_tensors():
    x, w, b = torch.randn(2, 8), torch.randn(4, 8), torch.randn(4)
    if not cpukernel.available():
        assert not cpukernel.usable(x, w, b)
        return
    assert cpukernel.usable(x, w, b) and cpukernel.usable(x, w, None)
    assert not cpukernel.usable(x.double(), w.double(), None)
    assert not cpukernel.usable(x, w.t().contiguous().t(), None)  # non-contiguous weight
    assert not cpukernel.usable(torch.randn(2, 7), w, None)  # K mismatch
    assert not cpukernel.usable(x, w, torch.randn(5))  # bias mismatch
    w.requires_grad_()
    assert not cpukernel.usable(x, w, None)  # autograd must see the op
    with torch.no_grad():
        assert cpukernel.usable(x, w, None)  # a model's parameters, read for a decode step


def _probe(env: dict) -> str:
    code = "from rlhfkit.kernels import cpukernel; print(cpukernel.available(), '|', cpukernel.why_unavailable())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_switched_off_by_environment():
    assert _probe({"RLHFKIT_CPU_KERNEL": "0"}) == "False | RLHFKIT_CPU_KERNEL=0"


@needs_kernel
def test_built_once_into_the_cache_and_falls_back_without_a_compiler(tmp_path):
    assert _probe({"XDG_CACHE_HOME": str(tmp_path)}) == "True | None"
    built = list((tmp_path / "rlhfkit").glob("cpukernels-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert _probe({"XDG_CACHE_HOME": str(tmp_path)}) == "True | None"
    assert built[0].stat().st_mtime_ns == mtime and len(list((tmp_path / "rlhfkit").iterdir())) == 1
    missing = _probe({"XDG_CACHE_HOME": str(tmp_path / "other"), "CC": str(tmp_path / "no-such-cc")})
    assert missing.startswith("False | could not build or load decode_matmul.c, train_elementwise.c")


@needs_kernel
@pytest.mark.parametrize("rows", [1, 8, 13, 70])  # 70: the row scales no longer fit the loop's stack buffer
def test_normalised_rows_equal_rms_norm_then_linear(rows):
    """norm_eps: each row divided by sqrt(mean(x^2) + eps) before the product (RMSNorm without its weight), then
    bias and the added term. At scale 1e-3, mean(x^2) ~ 1e-6 is the size of eps, so eps's place counts too."""
    g = torch.Generator().manual_seed(rows)
    for k in (29, 256):
        x, w = torch.randn(rows, k, generator=g), torch.randn(40, k, generator=g)
        b, r = torch.randn(40, generator=g), torch.randn(rows, 40, generator=g)
        for scale in (1.0, 100.0, 1e-3):
            xs = x * scale
            want = F.linear(F.rms_norm(xs.double(), (k,), None, 1e-6), w.double(), b.double()) + r.double()
            y = cpukernel.linear(xs, w, b, r, norm_eps=1e-6)
            torch.testing.assert_close(y.double(), want, atol=5e-5, rtol=1e-5)


def test_first_use_under_inference_mode_loads_the_kernels():
    """The kernels may first be asked for inside inference_mode (a reference forward) or an autograd Function's
    forward; their load-time self-test (run at every load, cached build or not) computes reference gradients and
    must still run. A fresh process, so this is the first use. (A kernel load that ran its self-test under
    the caller's grad mode raised here.)"""
    code = ("import torch\nfrom rlhfkit.kernels import cpukernel\nwith torch.inference_mode():\n"
            "    ok = cpukernel.available()\nprint(ok, cpukernel.why_unavailable())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "self-test" not in proc.stdout and "Traceback" not in proc.stderr
