"""rlhfkit.math.logprobs: token log-probs (with temperature), entropy, masked reductions, whitening."""
import math

import pytest
import torch

from rlhfkit.math.logprobs import (entropy_from_logits, masked_mean, masked_sum, masked_var, masked_whiten,
                                  sequence_logprobs, token_logprobs)
from rlhfkit.models.logps import linear_logprobs


def _naive(logits, labels, temperature=1.0):
    return torch.log_softmax(logits.double() / temperature, dim=-1).gather(-1, labels[..., None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
@pytest.mark.parametrize("chunk_rows", [1, 5, 1024])
def test_token_logprobs_match_naive_log_softmax(temperature, chunk_rows):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 11, (3, 7), generator=g)
    got = token_logprobs(logits, labels, temperature=temperature, chunk_rows=chunk_rows)
    assert got.shape == (3, 7) and got.dtype == torch.float64
    torch.testing.assert_close(got, _naive(logits, labels, temperature), rtol=1e-12, atol=1e-12)


def test_temperature_divides_logits_before_softmax():
    """Two tokens with logits (0, 2) at T = 2: z / T = (0, 1), so log p(token 1) = 1 - log(1 + e) = -0.31326...
    Multiplying instead (0, 4) would give -0.01815; ignoring T gives -0.12693. (PITFALLS #7)"""
    logits = torch.tensor([[[0.0, 2.0]]], dtype=torch.float64)
    got = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    assert got.item() == pytest.approx(1 - math.log(1 + math.e), rel=1e-12)


def test_token_logprobs_bf16_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 50, generator=g) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 5), generator=g)
    got = token_logprobs(logits, labels)
    assert got.dtype == torch.float32
    # reference from the same bf16 values, upcast: only float32 rounding remains
    torch.testing.assert_close(got.double(), _naive(logits.double(), labels), rtol=1e-6, atol=1e-6)


def test_negative_labels_give_zero_logprob_and_gradient_flows():
    logits = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[2, -100, 0]])
    got = token_logprobs(logits, labels)
    assert got[0, 1].item() == 0.0
    torch.testing.assert_close(got[0, [0, 2]], _naive(logits.detach(), labels.clamp(min=0))[0, [0, 2]])
    got.sum().backward()
    assert torch.all(logits.grad[0, 1] == 0) and logits.grad[0, 0].abs().sum() > 0


def test_shape_convention_next_token():
    """logits[:, :-1] score input_ids[:, 1:]: a 'model' whose logits put all mass on token (t + 1) at position t
    gives log-prob 0 for every shifted label of the sequence 0, 1, 2, ... and very negative otherwise."""
    T, V = 5, 8
    input_ids = torch.arange(T)[None]  # (1, T)
    logits = torch.full((1, T, V), -1e4, dtype=torch.float64)
    logits[0, torch.arange(T), (torch.arange(T) + 1) % V] = 0.0
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    assert lp.shape == (1, T - 1)
    torch.testing.assert_close(lp, torch.zeros(1, T - 1, dtype=torch.float64))


def test_entropy_uniform_is_log_v_and_matches_naive():
    V = 13
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 3, V, dtype=torch.float64)),
                          torch.full((2, 3), math.log(V), dtype=torch.float64), rtol=1e-12)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, V, generator=g, dtype=torch.float64) * 3
    for temp in (1.0, 0.5):
        logp = torch.log_softmax(logits / temp, -1)
        naive = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(entropy_from_logits(logits, temp, chunk_rows=3), naive, rtol=1e-12, atol=1e-12)
    # a one-hot distribution has entropy 0
    onehot = torch.tensor([[[0.0, -1e4, -1e4]]], dtype=torch.float64)
    assert entropy_from_logits(onehot).abs().item() < 1e-12


def test_masked_reductions_by_hand():
    """x = [[1, 2, 3], [4, 5, 6]], mask = [[T, T, F], [T, F, F]]: sum 1+2+4 = 7, mean 7/3,
    per-row sums (3, 4), per-row means (1.5, 4); unbiased var of {1, 2, 4} = ((4/3)^2 + (1/3)^2 + (5/3)^2)/2 = 7/3."""
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_sum(x, m).item() == 7.0
    assert masked_mean(x, m).item() == pytest.approx(7 / 3, rel=1e-12)
    assert masked_sum(x, m, dim=1).tolist() == [3.0, 4.0]
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 4.0]
    assert masked_var(x, m).item() == pytest.approx(7 / 3, rel=1e-12)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(14 / 9, rel=1e-12)


def test_all_false_mask_gives_zero_not_nan():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    m = torch.zeros(2, 2, dtype=torch.bool)
    assert masked_sum(x, m).item() == 0.0
    assert masked_mean(x, m).item() == 0.0
    assert masked_mean(x, m, dim=1).tolist() == [0.0, 0.0]
    assert masked_var(x, m).item() == 0.0
    assert sequence_logprobs(x, m).tolist() == [0.0, 0.0]
    assert sequence_logprobs(x, m, average=True).tolist() == [0.0, 0.0]


def test_masked_whiten_mean0_std1_over_mask():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3 + 5
    m = torch.rand(4, 9, generator=g) > 0.3
    w = masked_whiten(x, m)
    vals = w[m]
    assert abs(vals.mean().item()) < 1e-12
    assert vals.std().item() == pytest.approx(1.0, rel=1e-7)  # eps 1e-8 inside the rsqrt, var ~9
    assert torch.all(w[~m] == 0)
    # shift_mean=False only rescales: mean preserved, std 1
    w2 = masked_whiten(x, m, shift_mean=False)
    assert w2[m].mean().item() == pytest.approx(x[m].mean().item(), rel=1e-12)
    assert w2[m].std().item() == pytest.approx(1.0, rel=1e-7)


def test_sequence_logprobs_sum_and_average():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    assert sequence_logprobs(lp, m).tolist() == [-6.0, -1.0]
    assert sequence_logprobs(lp, m, average=True).tolist() == [-2.0, -0.5]


def test_pure_math_modules_import_only_torch():
    """DESIGN.md: logprobs, losses, advantages, kl import only torch (+ stdlib and each other). Run in a fresh
    interpreter so modules imported by other tests don't hide a heavy import. (numpy is not listed: torch imports it.)"""
    import subprocess
    import sys

    code = ("import sys; import rlhfkit.math.logprobs, rlhfkit.math.losses, rlhfkit.math.advantages, rlhfkit.math.kl; "
            "heavy = sorted(m for m in ('transformers', 'datasets', 'accelerate', 'yaml', 'fastapi') "
            "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)")
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # the repo root, importable without install
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_linear_logprobs_hand_worked():
    """h = (1, 0), an LM head with rows (1, 0), (0, 1), (0, 0): logits (1, 0, 0), log Z = log(e + 2) = 1.5514448;
    log p(token 0) = 1 - 1.5514448 = -0.5514448, log p(token 2) = -1.5514448. The gradient of log p(token 0) in the
    logits is onehot - softmax = (1 - 0.5761169, -0.2119416, -0.2119416)."""
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    got = linear_logprobs(h, w, torch.tensor([0, 2]))
    torch.testing.assert_close(got, torch.tensor([-0.5514448, -1.5514448], dtype=torch.float64), rtol=0, atol=1e-7)
    got[0].backward()
    # d/dW = (onehot - softmax)^T h: only W's first column (h's non-zero coordinate) moves
    torch.testing.assert_close(w.grad[:, 0], torch.tensor([0.4238831, -0.2119416, -0.2119416], dtype=torch.float64),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_logprobs_equal_autograd_of_the_plain_formula(dtype):
    g = torch.Generator().manual_seed(0)
    h0, w0 = torch.randn(9, 5, generator=g, dtype=dtype), torch.randn(13, 5, generator=g, dtype=dtype)
    labels, weights = torch.randint(0, 13, (9,), generator=g), torch.randn(9, generator=g, dtype=dtype)
    results = []
    for fused in (True, False):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = linear_logprobs(h, w, labels) if fused else token_logprobs(torch.nn.functional.linear(h, w), labels)
        (out * weights).sum().backward()
        results.append((out.detach(), h.grad, w.grad))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("vocab", [13, 2051])  # 2051: rows longer than the C passes' 8-lane body, with a tail
def test_linear_logprobs_fp32_takes_the_c_passes_and_matches_float64(vocab, monkeypatch):
    """In fp32 on the CPU the log-softmax runs in the C row passes (when they are built); values and gradients
    match the float64 formula to fp32 rounding."""
    from rlhfkit.kernels import cpukernel
    from rlhfkit.models import logps

    taken = []
    monkeypatch.setattr(logps, "_fast_rows", lambda z, f=logps._fast_rows: taken.append(f(z)) or taken[-1])
    g = torch.Generator().manual_seed(1)
    h0, w0 = torch.randn(37, 16, generator=g) * 2, torch.randn(vocab, 16, generator=g)
    labels, weights = torch.randint(0, vocab, (37,), generator=g), torch.randn(37, generator=g)
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    out = linear_logprobs(h, w, labels)
    (out * weights).sum().backward()
    assert taken == [cpukernel.available()]
    h64, w64 = h0.double().requires_grad_(), w0.double().requires_grad_()
    want = token_logprobs(torch.nn.functional.linear(h64, w64), labels)
    (want * weights.double()).sum().backward()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)


def test_c_log_softmax_passes_hand_worked():
    """z = (0, log 3): log Z = log(1 + 3) = 1.3862944. With g = 2 and label 0 the gradient of 2 log p(0) is
    2 (onehot - softmax) = 2 ((1, 0) - (1/4, 3/4)) = (1.5, -1.5). A row of -inf has log Z = -inf."""
    from rlhfkit.kernels import cpukernel

    if not cpukernel.available():
        pytest.skip(f"no CPU kernel here: {cpukernel.why_unavailable()}")
    z = torch.tensor([[0.0, math.log(3.0)], [-math.inf, -math.inf]])
    logz = cpukernel.logsumexp_rows(z)
    assert logz[0].item() == pytest.approx(math.log(4.0), abs=1e-6) and logz[1].item() == -math.inf
    grad = cpukernel.logsoftmax_grad_rows_(z[:1].clone(), logz[:1], torch.tensor([2.0]), torch.tensor([0]))
    torch.testing.assert_close(grad, torch.tensor([[1.5, -1.5]]), rtol=0, atol=1e-6)


def test_linear_logprobs_refuse_a_second_backward():
    h, w = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3)
    out = linear_logprobs(h, w, torch.tensor([1, 3])).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.backward()
