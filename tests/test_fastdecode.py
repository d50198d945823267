"""fastdecode: the sampler's decode-only forward gives the transformers forward's logits at every step.

Checked on Llama (multi-head and grouped-query), Llama with attention and MLP biases, and Qwen2 (q/k/v bias), with
left-padded prompts of different lengths and finished rows dropped mid-generation; then whole `sample` calls,
greedy and at temperature 1, give the same tokens on both paths. Models it does not cover fall back.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlhfkit import data as data_lib
from rlhfkit.kernels import cpukernel
from rlhfkit.rollout import fastdecode
from rlhfkit.rollout.generate import _HFDecoder, sample

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]


def _llama(**kw):
    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **kw})).eval()


def _qwen2():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        use_sliding_window=False, pad_token_id=0)).eval()


def _llama_bias():
    """Llama with attention and MLP biases, drawn at random: transformers zero-initialises them."""
    model = _llama(attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_()
    return model


MODELS = {
    "llama": _llama,
    "llama-gqa": lambda: _llama(num_key_value_heads=2),
    "llama-bias": _llama_bias,
    "llama-rope-scaled": lambda: _llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
    # frequencies that depend on the length seen so far: cos/sin are asked of the model at every step, not tabulated
    "llama-rope-dynamic": lambda: _llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 500.0},
                                         max_position_embeddings=8),
    "qwen2": _qwen2,
}


def _matmul_path(path, monkeypatch) -> list:
    """These weights are small: force the paths a large model's decode steps take (the C loop, or w @ x^T).
    Returns the list of weight shapes the C loop multiplied."""
    if path == "kernel" and not cpukernel.available():
        pytest.skip(f"no CPU kernel here: {cpukernel.why_unavailable()}")
    if path != "f.linear":
        monkeypatch.setattr(fastdecode, "_SMALL_WEIGHT", 0)
    if path == "transposed":
        monkeypatch.setattr(fastdecode, "_KERNEL_ROWS", 0)
    cpukernel.available()  # load (and self-test) the kernels first: those calls are not the decoder's
    seen, linear = [], cpukernel.linear
    monkeypatch.setattr(cpukernel, "linear", lambda x, w, *rest, **kw: seen.append(tuple(w.shape)) or
                        linear(x, w, *rest, **kw))
    return seen


@pytest.mark.parametrize("matmul", ["f.linear", "transposed", "kernel"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_equal_transformers_at_every_step_with_rows_dropped(name, matmul, monkeypatch):
    kernel_calls = _matmul_path(matmul, monkeypatch)
    model = MODELS[name]()
    fast = fastdecode.for_model(model)
    assert fast is not None, fastdecode._why_unsupported(model)
    ids, att = data_lib.pad_left(PROMPTS, 0)
    hf = _HFDecoder(model)
    a, b = fast.start(ids, att, 6), hf.start(ids, att, 6)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    toks = torch.tensor([3, 4, 5, 6])
    for t in range(6):
        if t == 2:  # row 1 finished: both decoders drop it
            keep = torch.tensor([0, 2, 3])
            fast.keep(keep), hf.keep(keep)
            toks = toks[keep]
        a, b = fast.step(toks), hf.step(toks)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        toks = (toks * 7 + t) % 60 + 3
    # on that path every projection of the 6 steps, the model's own weights included, went through the C loop, and
    # of the prefill (4 x 7 = 28 rows, over _KERNEL_ROWS) only the last position's lm_head
    per_step = 4 * len(model.model.layers) + 1
    assert len(kernel_calls) == (6 * per_step + 1 if matmul == "kernel" else 0)


def test_repeated_prompts_are_prefilled_once_with_the_same_logits():
    """GRPO repeats each prompt G times: the decoder prefills each distinct prompt once and copies its cache rows.
    Logits stay equal to the transformers forward for every row, at the prefill and at later steps."""
    model = _llama(num_key_value_heads=2)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[3], PROMPTS[1], PROMPTS[0]]
    ids, att = data_lib.pad_left(prompts, 0)
    fast, hf = fastdecode.for_model(model), _HFDecoder(model)
    torch.testing.assert_close(fast.start(ids, att, 3), hf.start(ids, att, 3), atol=1e-5, rtol=1e-5)
    assert fast.k[0].shape[0] == len(prompts)
    toks = torch.tensor([3, 4, 5, 6, 7, 8])
    for _ in range(3):
        torch.testing.assert_close(fast.step(toks), hf.step(toks), atol=1e-5, rtol=1e-5)
        toks = (toks * 5 + 1) % 60 + 3


def test_sample_same_tokens_on_both_paths(monkeypatch):
    model = _llama(num_key_value_heads=2)
    runs = {}
    for path in ("fast", "hf"):
        monkeypatch.setenv("RLHFKIT_DECODE", "" if path == "fast" else "hf")
        g = torch.Generator().manual_seed(3)
        runs[path] = (sample(model, PROMPTS * 4, eos_id=2, pad_id=0, max_new_tokens=12, temperature=1.0, generator=g),
                      sample(model, PROMPTS, eos_id=2, pad_id=0, max_new_tokens=12, temperature=0.0))
    for fast, hf in zip(runs["fast"], runs["hf"]):
        assert fast.response_ids == hf.response_ids and fast.has_eos == hf.has_eos
    assert len({len(r) for r in runs["fast"][0].response_ids}) > 1  # some rows stopped early: dropping was exercised


def test_weights_are_read_live_after_an_update():
    """A policy that trains between rollouts is sampled as it is now, not as it was when first decoded."""
    model = _llama()
    ids, att = data_lib.pad_left(PROMPTS, 0)
    fast = fastdecode.for_model(model)
    before = fast.start(ids, att, 2)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(3.0)
        model.model.layers[1].mlp.up_proj.weight.mul_(-1.0)
    after = fast.start(ids, att, 2)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _HFDecoder(model).start(ids, att, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("matmul", ["f.linear", "transposed", "kernel"])
def test_linear_equals_f_linear_on_every_path(matmul, monkeypatch):
    """`_linear` is F.linear (+ residual): by the C loop (up to _KERNEL_ROWS rows), as (w @ x^T)^T (up to _FEW_ROWS
    rows of a large weight), by F.linear otherwise; bias, 3-d input, a residual added last."""
    seen = _matmul_path(matmul, monkeypatch)
    torch.manual_seed(0)
    w, b = torch.randn(600, 256), torch.randn(600)  # 153,600 elements: above _SMALL_WEIGHT
    shapes = {"kernel": [(8, 1, 256), (3, 256), (16, 256)], "transposed": [(8, 1, 256), (3, 256), (40, 256)],
              "f.linear": [(100, 256), (65, 1, 256)]}[matmul]  # a prefill over _FEW_ROWS rows takes F.linear
    calls = 0
    for shape in shapes:
        x = torch.randn(shape)
        res = torch.randn(*shape[:-1], 600)
        for bias in (None, b):
            for residual in (None, res):
                out = fastdecode._linear(x, w, bias, residual=residual)
                assert out.shape == (*shape[:-1], 600)
                # outputs ~16 in size, sums of 256 fp32 products in another order: agree to ~1e-5 absolute
                want = F.linear(x, w, bias) + (0 if residual is None else residual)
                torch.testing.assert_close(out, want, atol=5e-5, rtol=1e-5)
                calls += 1
    assert len(seen) == (calls if matmul == "kernel" else 0)


def test_norm_and_rope_table_are_the_models_own_bit_for_bit():
    """The fp32 norm (F.rms_norm) equals transformers' LlamaRMSNorm, and the per-call cos/sin table equals the
    model's rotary_emb asked position by position, bit for bit."""
    model = _llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
    fast = fastdecode.for_model(model)
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.input_layernorm.weight.normal_()
        x = torch.randn(5, 3, 32) * 4
        assert torch.equal(fast._norm(x, layer.input_layernorm.weight), layer.input_layernorm(x))
        cos, sin = fast._rope_table(20, torch.float32, "cpu")
        pos = torch.tensor([[0, 3, 19], [7, 7, 1]])
        c, s_ = model.model.rotary_emb(x, pos)
        assert torch.equal(cos[pos], c) and torch.equal(sin[pos], s_)
    dynamic = fastdecode.for_model(MODELS["llama-rope-dynamic"]())
    assert dynamic._rope_table(20, torch.float32, "cpu") is None


def test_falls_back_where_it_does_not_apply(monkeypatch):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32))
    assert fastdecode.for_model(gpt2) is None
    assert fastdecode._why_unsupported(gpt2) == "model type"
    llama = _llama()  # an adapter-wrapped projection (what LoRA or a quantiser puts there) is not plain Linear
    llama.model.layers[1].self_attn.q_proj = torch.nn.Sequential(llama.model.layers[1].self_attn.q_proj)
    assert fastdecode.for_model(llama) is None
    monkeypatch.setenv("RLHFKIT_DECODE", "hf")
    assert fastdecode.for_model(_llama()) is None
    # GPT-2 still samples, through transformers
    s = sample(gpt2.eval(), PROMPTS, eos_id=2, pad_id=0, max_new_tokens=3, temperature=0.0)
    assert all(len(r) <= 3 for r in s.response_ids)


@pytest.mark.parametrize("name", ["llama", "llama-gqa", "llama-bias", "qwen2"])
def test_static_steps_equal_transformers_at_every_step(name):
    """The fixed-shape decode step that CUDA replays as a graph (`step_all`: every row fed, the whole cache attended
    under the bias, the slot and position advanced on the device), run eagerly here: the transformers forward's
    logits at every step, for left-padded prompts of different lengths and repeated prompts."""
    model = MODELS[name]()
    prompts = PROMPTS + [PROMPTS[1]]
    ids, att = data_lib.pad_left(prompts, 0)
    fast, hf = fastdecode.for_model(model), _HFDecoder(model)
    torch.testing.assert_close(fast.start(ids, att, 5, static=True), hf.start(ids, att, 5), atol=1e-5, rtol=1e-5)
    assert fast.static and fast.graph is None
    toks = torch.tensor([3, 4, 5, 6, 7])
    for t in range(5):
        torch.testing.assert_close(fast.step_all(toks), hf.step(toks), atol=1e-5, rtol=1e-5)
        toks = (toks * 7 + t) % 60 + 3
    assert int(fast.slot) == ids.shape[1] + 5


def test_static_sampling_loop_cuts_after_eos(monkeypatch):
    """`_sample_static` (CUDA's loop: all rows every step, finished rows checked every few steps): greedy samples
    equal the per-row loop's, each cut after its first EOS."""
    from rlhfkit.rollout import generate

    model = _llama(num_key_value_heads=2)
    want = sample(model, PROMPTS, eos_id=2, pad_id=0, max_new_tokens=12, temperature=0.0)
    start = fastdecode.LlamaDecoder.start
    monkeypatch.setattr(fastdecode.LlamaDecoder, "start", lambda self, *a: start(self, *a, static=True))
    monkeypatch.setattr(generate, "STOP_CHECK_EVERY", 3)
    got = sample(model, PROMPTS, eos_id=2, pad_id=0, max_new_tokens=12, temperature=0.0)
    assert got.response_ids == want.response_ids and got.has_eos == want.has_eos
    # force EOS as a frequent token to exercise cutting: the eos id set to the first greedy token of row 0
    eos = want.response_ids[0][0]
    got = sample(model, PROMPTS, eos_id=eos, pad_id=0, max_new_tokens=12, temperature=0.0)
    assert got.response_ids[0] == [eos] and got.has_eos[0]
    assert all(r.count(eos) <= 1 and (r[-1] == eos) == e for r, e in zip(got.response_ids, got.has_eos))


def test_static_buffers_are_reused_across_calls_and_follow_weight_updates():
    """The static path keeps its buffers (and, on CUDA, its graph) per model across calls of the same shape: a
    second call with other prompts, after the weights changed in place as an optimizer step changes them, still
    gives the transformers forward's logits at every step, and uses the very same buffers."""
    model = _llama(num_key_value_heads=2)
    seen = []
    for call, prompts in enumerate(([PROMPTS[0], PROMPTS[1], PROMPTS[0]], [PROMPTS[2], PROMPTS[3], PROMPTS[3]])):
        if call:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)  # in place: the parameters an optimizer step updates
        ids, att = data_lib.pad_left(prompts, 0)
        fast, hf = fastdecode.for_model(model), _HFDecoder(model)
        torch.testing.assert_close(fast.start(ids, att, 4, static=True), hf.start(ids, att, 4), atol=1e-5, rtol=1e-5)
        toks = torch.tensor([3, 4, 5])
        for t in range(4):
            torch.testing.assert_close(fast.step_all(toks), hf.step(toks), atol=1e-5, rtol=1e-5)
            toks = (toks * 3 + t) % 60 + 3
        seen.append((fast.k[0].data_ptr(), fast.bias.data_ptr(), fast.layers[0]["wqkv"].data_ptr()))
    assert seen[0] == seen[1]  # the same buffers: a CUDA graph recorded over them stays valid


def test_static_buffers_are_rebuilt_when_a_parameter_moves():
    """--fsdp frees a gathered layer's storage after each rollout and allocates it again, elsewhere, for the next
    (FSDP2's resize_(0) / resize_(n)); a graph reading a parameter in place would replay the old address. The
    static path then builds its buffers anew, and the logits are still the transformers forward's."""
    model = _llama(num_key_value_heads=2)
    ids, att = data_lib.pad_left([PROMPTS[0], PROMPTS[1]], 0)
    kept = []
    for call in range(2):
        if call:  # what FSDP does to a parameter between two rollouts
            with torch.no_grad():
                norm = model.model.norm.weight
                value = norm.detach().clone()
                storage, old = norm.untyped_storage(), norm.data_ptr()
                storage.resize_(0)
                blocker = torch.empty_like(value)  # holds the freed block, so the new one is elsewhere
                storage.resize_(value.numel() * value.element_size())
                norm.copy_(value)
                assert norm.data_ptr() != old and blocker is not None
        fast, hf = fastdecode.for_model(model), _HFDecoder(model)
        torch.testing.assert_close(fast.start(ids, att, 3, static=True), hf.start(ids, att, 3), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.step_all(torch.tensor([3, 4])), hf.step(torch.tensor([3, 4])), atol=1e-5,
                                   rtol=1e-5)
        kept.append(fastdecode._STATIC[model])
    moved = any(t is model.model.norm.weight for t, _ in kept[0]["ptrs"])
    assert moved and kept[1] is not kept[0]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft 0.18
def test_static_buffers_never_write_into_a_lora_base_weight():
    """A LoRA policy sampled with its adapters disabled (the reference) keeps some base weights as they are in
    the static buffers; a later call with adapters on (W + BA) must not copy into them: the base weights stay
    bit-identical and both calls give the transformers forward's logits."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_llama(num_key_value_heads=2),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero: make the adapters change the weights
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" not in n}
    ids, att = data_lib.pad_left(PROMPTS[:3], 0)
    for disabled in (True, False):
        ctx = model.disable_adapter() if disabled else __import__("contextlib").nullcontext()
        with ctx:
            fast, hf = fastdecode.for_model(model), _HFDecoder(model)
            torch.testing.assert_close(fast.start(ids, att, 3, static=True), hf.start(ids, att, 3),
                                       atol=1e-5, rtol=1e-5)
            toks = torch.tensor([3, 4, 5])
            for _ in range(3):
                torch.testing.assert_close(fast.step_all(toks), hf.step(toks), atol=1e-5, rtol=1e-5)
                toks = toks + 1
    assert all(torch.equal(base[n], p) for n, p in model.named_parameters() if "lora" not in n)
