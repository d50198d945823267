"""fusedops: the C SwiGLU and RMSNorm (forward and backward) equal transformers' modules for every family they are
switched on for, to fp32 rounding; hand-worked values; position invariance; untouched models elsewhere."""

import copy
import math

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from rlhfkit import cpukernel, fusedops

needs_kernel = pytest.mark.skipif(not cpukernel.available(), reason=f"no CPU kernel here: {cpukernel.why_unavailable()}")

# hidden 36 and intermediate 52: not multiples of 8, so the C loops' vector tails run
DIMS = dict(vocab_size=50, hidden_size=36, intermediate_size=52, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**DIMS)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**DIMS, sliding_window=None)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**DIMS)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**DIMS, head_dim=8)),  # q_norm / k_norm too
}


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids).logits
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@needs_kernel
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_model_equals_transformers(family):
    torch.manual_seed(0)
    plain = FAMILIES[family]()
    for p in plain.parameters():  # norm weights away from 1, so their gradients are tested
        p.data += 0.05 * torch.randn_like(p)
    fused = copy.deepcopy(plain)
    per_layer = 3 + (2 if family == "qwen3" else 0)  # MLP, two norms (+ q_norm, k_norm)
    assert fusedops.fuse(fused) == DIMS["num_hidden_layers"] * per_layer + 1  # + the final norm
    assert fusedops.fuse(fused) == DIMS["num_hidden_layers"] * per_layer + 1  # idempotent
    ids = torch.randint(0, 50, (3, 11))
    want, want_g = _loss_and_grads(plain, ids)
    got, got_g = _loss_and_grads(fused, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-4, atol=1e-5, msg=name)
    # not fp32: the module's own forward, exactly
    plain64, fused64 = copy.deepcopy(plain).double(), copy.deepcopy(fused).double()
    assert torch.equal(fused64(input_ids=ids).logits, plain64(input_ids=ids).logits)


@needs_kernel
def test_copies_keep_their_own_fused_forward():
    model = FAMILIES["llama"]()
    fusedops.fuse(model)
    twin = copy.deepcopy(model)
    mlp = twin.model.layers[0].mlp
    assert mlp.forward.__self__ is mlp and mlp.forward.__func__ is fusedops._mlp_forward


@needs_kernel
def test_a_non_silu_mlp_keeps_its_forward():
    model = LlamaForCausalLM(LlamaConfig(**DIMS, hidden_act="gelu"))
    assert fusedops.fuse(model) == 2 * DIMS["num_hidden_layers"] + 1  # the norms only
    assert "forward" not in model.model.layers[0].mlp.__dict__


def test_other_families_and_no_kernel_are_left_alone(monkeypatch):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    assert fusedops.fuse(gpt2) == 0
    monkeypatch.setattr(cpukernel, "available", lambda: False)
    llama = FAMILIES["llama"]()
    assert fusedops.fuse(llama) == 0
    assert all("forward" not in m.__dict__ for m in llama.modules())


@needs_kernel
def test_swiglu_hand_worked():
    """g = 0: silu(0) = 0, so out = 0 and d/du = 0; sigmoid(0) = 1/2, so d/dg = dout * u * 1/2 * (1 + 0) = dout * u / 2.
    g = 2, u = 3: sigmoid(2) = 0.8807971; out = 2 * 0.8807971 * 3 = 5.2847826;
    d/dg = 3 * 0.8807971 * (1 + 2 * 0.1192029) = 3.2723527; d/du = 1.7615942 (dout = 1)."""
    g = torch.tensor([0.0, 2.0], requires_grad=True)
    u = torch.tensor([5.0, 3.0], requires_grad=True)
    out = fusedops.SwiGLU.apply(g, u)
    out.backward(torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 5.2847826]), rtol=0, atol=2e-6)
    torch.testing.assert_close(g.grad, torch.tensor([10.0, 3.2723527]), rtol=0, atol=2e-6)
    torch.testing.assert_close(u.grad, torch.tensor([0.0, 1.7615942]), rtol=0, atol=2e-6)


@needs_kernel
def test_rmsnorm_hand_worked():
    """x = (3, 4), w = (1, 2), eps = 0: mean(x^2) = 12.5, r = 1/sqrt(12.5) = 0.28284271, x r = (0.8485281, 1.1313708),
    y = (0.8485281, 2.2627417). With dy = (1, 0): dw = dy * x r = (0.8485281, 0);
    dx = r (dy w - x r mean(dy w x r)) = r ((1, 0) - (0.8485281, 1.1313708) * 0.8485281 / 2) = (0.1810193, -0.1357645)."""
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    y = fusedops.RMSNorm.apply(x, w, 0.0)
    y.backward(torch.tensor([[1.0, 0.0]]))
    r = 1 / math.sqrt(12.5)
    torch.testing.assert_close(y, torch.tensor([[3 * r, 8 * r]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(w.grad, torch.tensor([3 * r, 0.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, torch.tensor([[0.1810193, -0.1357645]]), rtol=0, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("width", [7, 36, 1024])
def test_a_row_gets_the_same_bits_in_any_batch(width):
    """An element's result does not depend on where it sits or how many there are (vector body vs tail)."""
    g = torch.Generator().manual_seed(width)
    x, u, d = (torch.randn(13, width, generator=g) * 3 for _ in range(3))
    w = torch.randn(width, generator=g)
    full = (cpukernel.swiglu_forward(x, u), *cpukernel.swiglu_backward(x, u, d), cpukernel.rmsnorm_forward(x, w, 1e-6)[0])
    for a, b in ((0, 1), (3, 7), (5, 13)):
        part = (cpukernel.swiglu_forward(x[a:b], u[a:b]), *cpukernel.swiglu_backward(x[a:b], u[a:b], d[a:b]),
                cpukernel.rmsnorm_forward(x[a:b], w, 1e-6)[0])
        for f, p in zip(full, part):
            assert torch.equal(f[a:b], p)
    # the rows' dx does not depend on the batch either (dw, a sum over rows, does)
    y, rstd = cpukernel.rmsnorm_forward(x, w, 1e-6)
    dx = cpukernel.rmsnorm_backward(x, w, rstd, d)[0]
    assert torch.equal(dx[3:7], cpukernel.rmsnorm_backward(x[3:7], w, rstd[3:7], d[3:7])[0])
