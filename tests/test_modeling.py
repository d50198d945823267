"""Padding-free layout forwards (layout.layout_hidden_states): the same hidden states and gradients as the padded
rows, for every model family that takes that path, and untouched behaviour everywhere else."""

import copy

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from rlhfkit.kernels import cpukernel, fusedops
from rlhfkit.models import layout as layout_lib, logps, modeling

V = 50
DIMS = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def _models(head_dim: int = 8):
    """The padding-free families; a head dim of 16 lets fp32 forwards use the C block attention."""
    dims = dict(DIMS, head_dim=head_dim)
    yield "llama", LlamaForCausalLM(LlamaConfig(**dims))
    yield "mistral", MistralForCausalLM(MistralConfig(**dims, sliding_window=None))
    yield "qwen2", Qwen2ForCausalLM(Qwen2Config(**dims))
    yield "qwen3", Qwen3ForCausalLM(Qwen3Config(**dims))


def _items(seed: int = 0):
    """Prompts with one to three completions of uneven lengths, so packed rows hold several blocks and end in
    padding of different lengths."""
    g = torch.Generator().manual_seed(seed)

    def toks(n):
        return torch.randint(1, V, (n,), generator=g).tolist()

    return [(toks(5), [toks(3), toks(7)]), (toks(1), [toks(1), toks(4)]), (toks(9), [toks(2), toks(2)]),
            (toks(3), [toks(6), toks(1)])]


def _hidden_and_grads(m, lay, layout: bool):
    """Hidden states (R*L, H) of a layout through `layout_hidden_states` (layout) or as padded rows with the 4-D
    mask (the reference), and the parameters' gradients of sum(h[src]^2)."""
    m.zero_grad()
    if layout:
        h = layout_lib.layout_hidden_states(m, lay.input_ids, lay.position_ids, lay.mask)
    else:
        h = modeling.backbone(m)(input_ids=lay.input_ids, attention_mask=lay.mask,
                                 position_ids=lay.position_ids.clamp(min=0)).last_hidden_state.flatten(0, 1)
    (h[lay.src] ** 2).sum().backward()
    return h, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,model", list(_models()), ids=lambda x: x if isinstance(x, str) else "")
def test_padding_free_equals_padded_rows(name, model):
    """Hidden states at every real position, and the gradients of a loss on them, match the padded rows' forward
    with the 4-D mask (SDPA) on the same weights, in float64."""
    model = model.double().eval()
    padded = copy.deepcopy(model)
    for packing in (True, False):
        lay = layout_lib.build_layout(_items(), pad_id=0, packing=packing)
        assert (lay.position_ids < 0).any(), "the test needs rows that end in padding"
        outs = [_hidden_and_grads(model, lay, layout=True), _hidden_and_grads(padded, lay, layout=False)]
        assert model.config._attn_implementation == modeling.ROWS_ATTENTION
        assert padded.config._attn_implementation == "sdpa"
        real = (lay.position_ids >= 0).reshape(-1)
        torch.testing.assert_close(outs[0][0][real], outs[1][0][real], rtol=1e-10, atol=1e-10)
        assert (outs[0][0][~real] == 0).all()  # padding positions: zeros, never read
        assert outs[0][1].keys() == outs[1][1].keys() and len(outs[0][1]) > 10
        for n in outs[0][1]:
            torch.testing.assert_close(outs[0][1][n], outs[1][1][n], rtol=1e-9, atol=1e-10, msg=n)


@pytest.mark.parametrize("name,model,dtype,tol",
                         [(n, m, torch.float64, 1e-10) for n, m in _models()]
                         + [(n, m, torch.float32, 1e-5) for n, m in _models(head_dim=16)],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_continuation_from_saved_keys_and_values_equals_a_full_forward(name, model, dtype, tol):
    """Runs that continue each item's prompt from the keys and values a layout forward saved give the hidden states
    a layout forward of prompt + run computes from scratch, for every item and both packings, including a one-token
    prompt (an empty prefix): in float64, and in fp32 with head dim 16, where the saving forward runs the C block
    attention with its own rotary embedding and saves keys rotated by transformers' function."""
    model = model.to(dtype).eval()
    items = _items()
    g = torch.Generator().manual_seed(1)
    conts = [torch.randint(1, V, (n,), generator=g).tolist() for n in (4, 1, 6, 3)]
    for packing in (True, False):
        lay = layout_lib.build_layout(items, pad_id=0, packing=packing)
        saved: dict = {}
        with torch.no_grad():
            layout_lib.layout_hidden_states(model, lay.input_ids, lay.position_ids, lay.mask, save_kv=saved)
            assert sorted(saved) == list(range(model.config.num_hidden_layers))
            runs = [(torch.arange(int(lay.prompt_at[i]), int(lay.prompt_at[i]) + len(p) - 1), [p[-1]] + c, len(p) - 1)
                    for i, ((p, _), c) in enumerate(zip(items, conts))]
            got = layout_lib.continuation_hidden_states(model, saved, runs)
            full = layout_lib.build_layout([(p, [c]) for (p, _), c in zip(items, conts)], pad_id=0, packing=packing)
            h = layout_lib.layout_hidden_states(model, full.input_ids, full.position_ids, full.mask)
        # the hidden states that predict each continuation token: the prompt's last, then the run's own but its last
        want = h[full.src[torch.argsort(full.seq, stable=True)]]  # src runs in row order; sort by item
        keep = torch.cat([torch.arange(len(c)) + sum(len(x) + 1 for x in conts[:i]) for i, c in enumerate(conts)])
        assert got.shape[0] == sum(len(c) + 1 for c in conts)
        torch.testing.assert_close(got[keep], want, rtol=tol, atol=tol)


@pytest.mark.skipif(not cpukernel.available(), reason=f"no CPU kernel here: {cpukernel.why_unavailable()}")
@pytest.mark.parametrize("name,model", list(_models(head_dim=16)), ids=lambda x: x if isinstance(x, str) else "")
def test_fp32_layout_forward_uses_the_block_attention_kernel(name, model, monkeypatch):
    """In fp32 on the CPU (head dim 16) the padding-free forward runs fusedops.BlockAttention, once per layer, and
    its hidden states and gradients equal the padded rows' float64 forward to fp32 rounding."""
    model = model.eval()
    ref = copy.deepcopy(model).double()
    calls = []
    monkeypatch.setattr(fusedops.BlockAttention, "apply",
                        lambda *a, _apply=fusedops.BlockAttention.apply: calls.append(1) or _apply(*a))
    lay = layout_lib.build_layout(_items(), pad_id=0)
    outs = [(h[lay.src].double(), {n: g.double() for n, g in grads.items()})
            for h, grads in (_hidden_and_grads(model, lay, layout=True), _hidden_and_grads(ref, lay, layout=False))]
    assert len(calls) == DIMS["num_hidden_layers"]
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for n in outs[1][1]:  # fp32 SDPA is as far from float64: up to ~1.2e-4 on gradients of size ~2
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], rtol=1e-4, atol=5e-4, msg=n)


@pytest.mark.parametrize("name,model", list(_models()), ids=lambda x: x if isinstance(x, str) else "")
def test_needed_tokens_only_equal_the_full_forward(name, model):
    """layout_hidden_states(..., needed=src) gives the full forward's h[src] (src repeats each prompt's last token,
    once per completion), with the same gradients, in float64, and the last layer's MLP sees only the distinct
    needed tokens."""
    model = model.double()
    lay = layout_lib.build_layout(_items(), pad_id=0)
    seen = []
    body = modeling.backbone(model)
    hook = body.layers[-1].mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    outs = []
    for needed in (None, lay.src):
        model.zero_grad()
        h = layout_lib.layout_hidden_states(model, lay.input_ids, lay.position_ids, lay.mask, needed=needed)
        h = h[lay.src] if needed is None else h
        (h ** 2 * torch.linspace(0, 1, h.shape[-1])).sum().backward()
        outs.append((h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    hook.remove()
    assert seen == [lay.tokens, len(set(lay.src.tolist()))] and seen[1] < seen[0]
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
    for n in outs[0][1]:
        torch.testing.assert_close(outs[1][1][n], outs[0][1][n], rtol=1e-10, atol=1e-12, msg=n)
    with pytest.raises(ValueError, match="padding"):
        pad = (lay.position_ids.reshape(-1) < 0).nonzero()[0]
        layout_lib.layout_hidden_states(model, lay.input_ids, lay.position_ids, lay.mask, needed=pad)


def test_other_forwards_are_plain_sdpa():
    """Once switched, a model's ordinary padded forward (generation, scoring) is exactly SDPA's."""
    model = LlamaForCausalLM(LlamaConfig(**DIMS)).double().eval()
    ref = copy.deepcopy(model)
    lay = layout_lib.build_layout(_items(), pad_id=0)
    layout_lib.layout_hidden_states(model, lay.input_ids, lay.position_ids, lay.mask)
    assert model.config._attn_implementation == modeling.ROWS_ATTENTION
    assert ref.config._attn_implementation == "sdpa"
    ids = torch.randint(1, V, (3, 8))
    att = torch.ones(3, 8, dtype=torch.long)
    att[0, :3] = 0  # left padding, as in generation
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=att).logits,
                                   ref(input_ids=ids, attention_mask=att).logits, rtol=0, atol=0)


def test_unlisted_family_uses_padded_rows():
    """GPT-2 is not in UNPADDED_MODEL_TYPES: its layout forward stays padded (learned absolute positions never see
    the -1 that marks padding) and equals the separate-rows forward."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)).double().eval()
    prompt, comps = [3, 4, 5], [[6, 7], [8]]
    lay = layout_lib.build_layout([(prompt, comps), ([9], [[10, 11, 12], [13]])], pad_id=0)
    with torch.no_grad():
        h = layout_lib.layout_hidden_states(model, lay.input_ids, lay.position_ids, lay.mask)
        alone = model.transformer(input_ids=torch.tensor([prompt + comps[1]])).last_hidden_state[0]
    assert model.config._attn_implementation != modeling.ROWS_ATTENTION
    # sequence 2 = completion 1 of item 0; its last token's hidden state equals the separate row's
    torch.testing.assert_close(h[lay.last[2]], alone[-1], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------- the packed layout
def _packed_logps_and_grads(m, items, packed: bool):
    """Summed completion log-probs per sequence (build_layout numbering) and the gradients of their sum: through
    `build_packed` + `packed_hidden_states` (packed) or the padded rows with the 4-D block mask (the reference)."""
    m.zero_grad()
    head = m.get_output_embeddings()
    if packed:
        lay = layout_lib.build_packed(items)
        h = layout_lib.packed_hidden_states(m, lay.packed.with_needed(lay.src))
    else:
        lay = layout_lib.build_layout(items, pad_id=0, packing=True)
        h = modeling.backbone(m)(input_ids=lay.input_ids, attention_mask=lay.mask,
                                 position_ids=lay.position_ids.clamp(min=0)).last_hidden_state.flatten(0, 1)[lay.src]
    tok = torch.log_softmax(head(h), -1).gather(-1, lay.labels[:, None]).squeeze(-1)
    out = torch.zeros(lay.n_seqs, dtype=tok.dtype).index_add(0, lay.seq, tok)
    out.sum().backward()
    return out, lay, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,model", list(_models()), ids=lambda x: x if isinstance(x, str) else "")
def test_packed_layout_equals_padded_rows(name, model):
    """The packed layout (every token once; a prompt's keys and values gathered into each of its completions'
    documents; attention through the padded-documents SDPA that runs where FlashAttention's varlen kernel does not)
    gives the padded rows' log-probs and gradients, in float64, for prompts with 1-2 completions."""
    model = model.double().eval()
    ref = copy.deepcopy(model)
    for items in (_items(), [(p, cs[:1]) for p, cs in _items(1)]):  # shared prompts; one completion each
        got, lay, g1 = _packed_logps_and_grads(model, items, packed=True)
        want, lay_ref, g2 = _packed_logps_and_grads(ref, items, packed=False)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        assert torch.equal(lay.lengths, lay_ref.lengths) and lay.tokens == lay_ref.tokens
        assert (lay.packed.doc_index is None) == all(len(cs) == 1 for _, cs in items)
        assert g1.keys() == g2.keys() and len(g1) > 10
        for n in g1:
            torch.testing.assert_close(g1[n], g2[n], rtol=1e-9, atol=1e-10, msg=n)


def test_sequences_layout_equals_padded_token_logprobs():
    """`sequences_layout` (right-padded rows packed, each row one document) gives TokenLogprobs' padded (B, T-1)
    log-probs exactly where the target mask is set, zeros elsewhere."""
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(**DIMS)).double().eval()
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16], [17]]
    masks = [[False, False, True, True, True], [False, True], [False] * 3 + [True] * 4, [False]]
    from rlhfkit import data as data_lib

    ids, att, tgt = data_lib.pad_right(seqs, 0, masks)
    lp = logps.TokenLogprobs(m)
    want = lp(ids, att, tgt)["logprobs"]
    got = lp(ids, att, tgt, layout=layout_lib.sequences_layout(ids, att, tgt))["logprobs"]
    assert want.shape == got.shape == (4, 6) and (want != 0).sum() == 3 + 1 + 4 + 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_use_packed_is_the_one_seam(monkeypatch):
    """Packed on any non-CPU device, and on a CPU without the compiled kernels; block rows on a CPU with them;
    never for a family that cannot take keyword arguments down to its attention."""
    llama = LlamaForCausalLM(LlamaConfig(**DIMS))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2))
    monkeypatch.setattr(cpukernel, "available", lambda: True)
    assert not layout_lib.use_packed(llama, "cpu") and layout_lib.use_packed(llama, "cuda")
    assert not layout_lib.use_packed(gpt2, "cuda")
    monkeypatch.setattr(cpukernel, "available", lambda: False)
    assert layout_lib.use_packed(llama, "cpu")
