"""fusedops: the C SwiGLU and RMSNorm (forward and backward) equal transformers' modules for every family they are
switched on for, to fp32 rounding; hand-worked values; position invariance; untouched models elsewhere."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from rlhfkit.kernels import cpukernel, fusedops

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


# ------------------------------------------------------------------------------------------------- block attention
def _block_problem(lens, heads=4, kv_heads=2, d=32, density=0.3, seed=0):
    """Rows of the given lengths (partial 16-tiles) under random masks that keep the diagonal; q as the transposed
    (1, T, heads, d) view transformers passes; k, v with fewer heads (GQA)."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q = torch.randn(1, T, heads, d, generator=g).transpose(1, 2)
    k, v = (torch.randn(1, kv_heads, T, d, generator=g) for _ in range(2))
    rows, start = [], 0
    for n in lens:
        rows.append((start, start + n, (torch.rand(n, n, generator=g) < density) | torch.eye(n, dtype=torch.bool)))
        start += n
    return q, k, v, rows


def _sdpa_rows(q, k, v, rows, scale):
    groups = q.shape[1] // k.shape[1]
    return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b].repeat_interleave(groups, 1),
                                                     v[:, :, a:b].repeat_interleave(groups, 1), attn_mask=m,
                                                     scale=scale) for a, b, m in rows], 2).transpose(1, 2)


@needs_kernel
def test_block_attention_hand_worked():
    """One row of two tokens, one head, d = 16, mask [[1, 0], [1, 1]], q = 0 so every score is 0 (uniform softmax).
    v_0 = 2, v_1 = 4 (every channel): out_0 = v_0 = 2, out_1 = (2 + 4) / 2 = 3.
    dout = 1: D_i = dout_i . out_i = 32, 48; dP_ij = dout_i . v_j = 32, 64;
    dS_00 = 1 * (32 - 32) = 0; dS_10 = 1/2 * (32 - 48) = -8, dS_11 = 1/2 * (64 - 48) = 8.
    dq_1 = scale * (dS_10 k_0 + dS_11 k_1) = 0.25 * (-8 * 1 + 8 * 3) = 4 (k_0 = 1, k_1 = 3); dq_0 = 0.
    dk = scale * dS^T q = 0. dv_0 = P_00 + P_10 = 1.5, dv_1 = P_11 = 0.5."""
    q = torch.zeros(1, 1, 2, 16, requires_grad=True)
    k = torch.stack([torch.ones(16), 3 * torch.ones(16)])[None, None].requires_grad_()
    v = torch.stack([2 * torch.ones(16), 4 * torch.ones(16)])[None, None].requires_grad_()
    mask = torch.tensor([[True, False], [True, True]])
    out = fusedops.BlockAttention.apply(q, k, v, [(0, 2, mask)], 0.25)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([[2.0] * 16, [3.0] * 16]), rtol=0, atol=1e-6)
    torch.testing.assert_close(q.grad[0, 0], torch.tensor([[0.0] * 16, [4.0] * 16]), rtol=0, atol=1e-5)
    torch.testing.assert_close(k.grad, torch.zeros_like(k), rtol=0, atol=0)
    torch.testing.assert_close(v.grad[0, 0], torch.tensor([[1.5] * 16, [0.5] * 16]), rtol=0, atol=1e-6)


def _rope(T, d, seed=2):
    """cos and sin (1, T, d) as transformers' Llama rotary embedding builds them, at shuffled positions."""
    pos = torch.randperm(3 * T, generator=torch.Generator().manual_seed(seed))[:T].float()
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    emb = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)[None]
    return emb.cos(), emb.sin()


@needs_kernel
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("lens,heads,kv_heads,d", [((37, 21, 16, 1), 4, 2, 32), ((70,), 2, 2, 16), ((5, 48), 3, 1, 64)])
def test_block_attention_equals_sdpa_in_float64(lens, heads, kv_heads, d, rope):
    """Outputs and the gradients of q, k and v against SDPA row by row in float64, to fp32 rounding; with `rope`, the
    kernel rotates q and k itself, against transformers' apply_rotary_pos_emb then SDPA."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k, v, rows = _block_problem(lens, heads, kv_heads, d)
    cos, sin = _rope(sum(lens), d) if rope else (None, None)
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    dout = torch.randn(1, sum(lens), heads, d, generator=torch.Generator().manual_seed(1))
    got = fusedops.BlockAttention.apply(qs, ks, vs, rows, 0.2, cos, sin)
    got.backward(dout)
    qr, kr = apply_rotary_pos_emb(q64, k64, cos.double(), sin.double()) if rope else (q64, k64)
    want = _sdpa_rows(qr, kr, v64, rows, 0.2)
    want.backward(dout.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for a, b in ((qs, q64), (ks, k64), (vs, v64)):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_block_attention_never_reads_what_the_mask_excludes():
    """Changing a key's value and key vectors leaves bit for bit unchanged the outputs of every query that may not
    attend to it, and a row's results do not depend on the other rows in the call."""
    q, k, v, rows = _block_problem((40, 33), heads=2, kv_heads=2, d=16)
    out = fusedops.BlockAttention.apply(q, k, v, rows, 0.25)
    j = 10  # a key of the first row
    k2, v2 = k.clone(), v.clone()
    k2[:, :, j] += 100.0
    v2[:, :, j] = 1e6
    out2 = fusedops.BlockAttention.apply(q, k2, v2, rows, 0.25)
    blind = ~rows[0][2][:, j]
    assert blind.sum() > 20
    assert torch.equal(out[0, :40][blind], out2[0, :40][blind])
    assert not torch.equal(out[0, :40][~blind], out2[0, :40][~blind])
    assert torch.equal(out[0, 40:], out2[0, 40:])
    alone = fusedops.BlockAttention.apply(q[:, :, 40:], k[:, :, 40:], v[:, :, 40:], [(0, 33, rows[1][2])], 0.25)
    assert torch.equal(alone, out[:, 40:])


def test_block_attention_usable_only_where_the_kernel_applies(monkeypatch):
    q = torch.zeros(1, 4, 5, 16)
    kv = torch.zeros(1, 2, 5, 16)
    if cpukernel.available():
        assert fusedops.block_attention_usable(q, kv, kv, 0.0)
    assert not fusedops.block_attention_usable(q, kv, kv, 0.1)  # dropout
    assert not fusedops.block_attention_usable(q.double(), kv.double(), kv.double(), 0.0)
    assert not fusedops.block_attention_usable(q[..., :8], kv[..., :8], kv[..., :8], 0.0)  # head dim 8
    assert not fusedops.block_attention_usable(torch.zeros(1, 3, 5, 16), kv, kv, 0.0)  # 3 heads over 2
    # probabilities over the limit: 4 heads x 16 x 16 floats per 16-token row, 4 KiB each
    monkeypatch.setattr(fusedops, "P_LIMIT_BYTES", 4 * 4096)
    assert fusedops.block_attention_usable(q, kv, kv, 0.0, [(0, 16), (16, 32), (32, 40), (40, 56)]) == \
        cpukernel.available()
    assert not fusedops.block_attention_usable(q, kv, kv, 0.0, [(0, 16), (16, 32), (32, 40), (40, 57)])
    monkeypatch.setattr(cpukernel, "available", lambda: False)
    assert not fusedops.block_attention_usable(q, kv, kv, 0.0)


@needs_kernel
def test_block_attention_rotates_exactly_as_transformers():
    """The kernel's own rotary embedding gives q and k the same bits as transformers' apply_rotary_pos_emb in fp32:
    the output with (cos, sin) equals, bit for bit, the output on the pre-rotated q and k."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k, v, rows = _block_problem((37, 21), heads=4, kv_heads=2, d=32)
    cos, sin = _rope(58, 32)
    qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(fusedops.BlockAttention.apply(q, k, v, rows, 0.2, cos, sin),
                       fusedops.BlockAttention.apply(qr, kr, v, rows, 0.2))
