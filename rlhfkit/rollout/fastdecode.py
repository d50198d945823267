"""A decode-only forward for Llama-family causal LMs, reading the model's own weights, for the sampler's hot loop.

Why: decoding a small model is bound by per-step overhead, not arithmetic. The transformers forward builds masks,
cache objects and output dataclasses at every token step: ~10 ms per step for the 4-layer benchmark model at
batch 8, where its matmuls take well under 1 ms (docs/benchmarks.md). This module does the same arithmetic with a
preallocated KV cache and fused projections (q|k|v and gate|up concatenated once per call), so a step is ~25
tensor ops per layer. On a CPU, a step's matmuls with a weight over 512 KiB go through a small C loop (`cpukernel`, up
to 16 rows, about 2x MKL's speed there) or are computed as (w @ x^T)^T, which MKL runs 1.2-1.6x faster than
x @ w^T when x has few rows (`_linear`).

It is exactly the model's computation, not an approximation: RMSNorm, rotary embedding (through the model's own
`rotary_emb`, so every rope type transformers supports), grouped-query attention, SiLU-gated MLP, biases where the
config has them. The tests compare its logits with the transformers forward at every step. Models it does not
recognise, or recognises with a feature it does not implement, use the transformers forward (`for_model` returns
None); so does everything when `RLHFKIT_DECODE=hf` is set.

The weights are read, not copied (apart from the fused projections, rebuilt per `start`), so a policy that trains
between rollouts is always sampled as it is now. A LoRA policy (peft) is read through its base model: each adapted
projection's weight is W + (alpha / r) B A (Hu et al. 2021, eq. 3), computed per `start` like the fused ones, or W
alone while the adapters are disabled.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F

from rlhfkit.kernels import cpukernel
from rlhfkit.models.modeling import is_lora, position_ids

SUPPORTED = {"llama", "mistral", "qwen2"}
# Static decoding (CUDA graphs): per model, the buffers and graph of its last static rollout, reused while the batch
# size, the cache length rounded up to STATIC_LEN_STEP and the dtype stay the same (`LlamaDecoder._capture`).
_STATIC: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
STATIC_LEN_STEP = 64
# rope types whose frequencies are fixed at load time (transformers' ROPE_INIT_FUNCTIONS): their cos/sin can be
# tabulated once per call; the others (dynamic, longrope) are asked at every step
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP / accelerate wrappers
        model = model.module
    return model.get_base_model() if is_lora(model) else model  # the adapters sit inside the base model's layers


def _is_linear(m) -> bool:
    """A plain nn.Linear, or a peft LoRA layer over one whose forward is W x + b + (alpha / r) B A x (no DoRA, no
    LoRA bias, no other kind of adapter), which `_weight` turns into one matrix."""
    if isinstance(m, torch.nn.Linear):
        return True
    base = getattr(m, "base_layer", None)
    if not isinstance(base, torch.nn.Linear) or not hasattr(m, "get_delta_weight"):
        return False
    extras = [getattr(m, name, {}) for name in ("use_dora", "lora_bias")]
    return type(m).__name__ == "Linear" and not any(any(d.values()) for d in extras if isinstance(d, dict))


def _weight(m) -> torch.Tensor:
    """The weight a projection applies: its own, or for a LoRA layer W + (alpha / r) B A of each active adapter
    (W alone while adapters are disabled or once merged into W)."""
    base = getattr(m, "base_layer", None)
    if base is None:
        return m.weight
    w = base.weight
    if m.disable_adapters or m.merged:
        return w
    for name in m.active_adapters:
        if name in m.lora_A:
            w = w + m.get_delta_weight(name).to(w.dtype)
    return w


def _why_unsupported(model: torch.nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    if os.environ.get("RLHFKIT_DECODE", "").lower() == "hf":
        return "RLHFKIT_DECODE=hf"
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return "model type"
    if not type(model).__name__.endswith("ForCausalLM"):
        return "not a *ForCausalLM"
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return "activation / tensor-parallel layout"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"  # mistral / qwen2 with a window: the cache semantics differ
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb"):
        return "layout"
    for layer in body.layers:
        a, m = layer.self_attn, layer.mlp
        if not all(_is_linear(getattr(a, n, None)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "attention projections are not Linear or LoRA over Linear (quantised, DoRA)"
        if not all(_is_linear(getattr(m, n, None)) for n in ("gate_proj", "up_proj", "down_proj")):
            return "MLP projections are not Linear or LoRA over Linear"
        if hasattr(a, "q_norm") or hasattr(a, "k_norm"):
            return "q/k norms"
    if not isinstance(getattr(model, "lm_head", None), torch.nn.Linear):
        return "lm_head"
    return None


def for_model(model: torch.nn.Module) -> "LlamaDecoder | None":
    """A decoder for `model`, or None when the transformers forward must be used."""
    model = _unwrap(model)
    return None if _why_unsupported(model) else LlamaDecoder(model)


def _cat(*ts):
    return None if ts[0] is None else torch.cat(ts, 0)


def _aliases_change(old: dict, new: dict) -> bool:
    """Whether a kept weight buffer IS one of the model's parameters (used as it is, with no cast or fusion) while
    this call's weight is another tensor (a LoRA layer's W + BA after a call with adapters disabled, say): copying
    into it would overwrite the parameter, so the buffers are built anew instead."""
    pairs = [(o, n) for ol, nl in zip(old["layers"], new["layers"]) for o, n in zip(ol.values(), nl.values())]
    pairs += [(old[k], new[k]) for k in ("final_norm", "lm", "lm_bias")]
    return any(isinstance(o, torch.nn.Parameter) and o is not n for o, n in pairs)


def _storage_moved(st: dict) -> bool:
    """Whether a parameter the kept graph reads in place now lives at another address: FSDP (`--fsdp`) frees a
    gathered layer's storage after a rollout and allocates it anew for the next, and a CUDA graph replays the
    addresses it was captured with."""
    return any(t.data_ptr() != ptr for t, ptr in st.get("ptrs", []))


class LlamaDecoder:
    """`start(input_ids, attention)` runs the (left-padded) prompts and returns the last logits; `step(ids)` feeds
    one token per row and returns the next logits; `keep(index)` drops finished rows from the cache."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.body = model.model

    def _weights(self):
        """Fused projections for this call (the concatenation takes ~3 ms for the 5 M-parameter benchmark model,
        about 1% of a 32-token rollout).

        Where the C loop will run the decode steps (an fp32 model on a CPU with weights over _SMALL_WEIGHT), each
        RMSNorm's weight is folded into the projection after it, W (g * x_hat) = (W g) x_hat, and the loop
        normalises its input rows itself: a layer's norm and its q|k|v (or gate|up, or the LM head) are one call.
        """
        lm = self.model.lm_head.weight
        self.fold = (lm.dtype == torch.float32 and lm.device.type == "cpu" and cpukernel.available()
                     and lm.numel() > _SMALL_WEIGHT)
        cast = lambda t: t if t is None else t.to(self.dtype)  # noqa: E731  (a no-op in the weights' own dtype)
        self.layers = []
        for layer in self.body.layers:
            a, m = layer.self_attn, layer.mlp
            ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
            wqkv = torch.cat([_weight(a.q_proj), _weight(a.k_proj), _weight(a.v_proj)], 0)
            wgu = torch.cat([_weight(m.gate_proj), _weight(m.up_proj)], 0)
            if self.fold:
                wqkv, wgu = wqkv.mul_(ln1), wgu.mul_(ln2)
            self.layers.append({k: cast(v) for k, v in dict(
                ln1=ln1, ln2=ln2, wqkv=wqkv, bqkv=_cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
                wo=_weight(a.o_proj), bo=a.o_proj.bias, wgu=wgu, bgu=_cat(m.gate_proj.bias, m.up_proj.bias),
                wd=_weight(m.down_proj), bd=m.down_proj.bias).items()})
        self.lm = cast(lm * self.body.norm.weight if self.fold else lm)
        self.lm_bias, self.final_norm = cast(self.model.lm_head.bias), cast(self.body.norm.weight)

    def _norm(self, x, w):
        # transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale (the cast order matters in bf16). In
        # fp32 F.rms_norm does the same operations in one call (bit-identical; tested).
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        xf = x.float()
        return w * (xf * xf.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()).to(x.dtype)

    @torch.inference_mode()
    def start(self, input_ids: torch.Tensor, attention: torch.Tensor, max_new_tokens: int,
              static: bool | None = None) -> torch.Tensor:
        """Prefill the prompts; returns the last logits. `static` (default: on CUDA unless RLHFKIT_CUDA_GRAPHS=0):
        decode with fixed shapes through `step_all`, replaying a CUDA graph on CUDA (eagerly elsewhere, for tests)."""
        # On CUDA the decode steps replay one CUDA graph (`_capture`): a step of a 16-layer model is ~250 kernels,
        # whose launches from Python take longer than the memory-bound kernels themselves. Under autocast the
        # weights are read in its dtype (what the trainer's forwards use), halving the bytes a step moves.
        if static is None:
            static = input_ids.is_cuda and os.environ.get("RLHFKIT_CUDA_GRAPHS", "1") != "0"
        self.static = static
        self.dtype = (torch.get_autocast_dtype("cuda") if input_ids.is_cuda and torch.is_autocast_enabled("cuda")
                      else self.model.lm_head.weight.dtype)
        with torch.autocast(input_ids.device.type, enabled=False):
            logits = self._start(input_ids, attention, max_new_tokens)
            self.static = self.static and self.rope is not None  # per-step rope (dynamic scaling): no graph
            if self.static:
                self._capture()
        return logits

    def _start(self, input_ids: torch.Tensor, attention: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        self._weights()
        # Identical prompt rows (GRPO's G samples of a prompt, best-of-n's n) are prefilled once and their cache
        # rows copied: the prefill is compute-bound and was a sixth of a 32-token rollout at G = 4.
        uniq, inverse = torch.unique(input_ids, dim=0, return_inverse=True)
        if uniq.shape[0] < input_ids.shape[0]:
            first = torch.full((uniq.shape[0],), input_ids.shape[0], device=input_ids.device).scatter_reduce(
                0, inverse, torch.arange(input_ids.shape[0], device=input_ids.device), "amin")
            logits = self._prefill(input_ids[first], attention[first], max_new_tokens)
            self.keep(inverse)
            return logits[inverse]
        return self._prefill(input_ids, attention, max_new_tokens)

    def _prefill(self, input_ids, attention, max_new_tokens):
        B, P = input_ids.shape
        L = P + max_new_tokens
        dtype, device = self.dtype, input_ids.device
        shape = (B, self.n_kv, L, self.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        # Additive attention bias of a decode step's query: 0 for the keys it may attend to, -inf for left padding
        # and for cache slots not yet written. A step opens its own slot (`step`).
        self.bias = torch.full((B, 1, 1, L), float("-inf"), dtype=dtype, device=device)
        self.bias[:, 0, 0, :P].masked_fill_(attention.bool(), 0.0)
        self.t = 0  # cache positions filled
        pos = position_ids(attention)
        self.next_pos = pos[:, -1:] + 1
        self.rope = self._rope_table(L, dtype, device)
        # Prompt queries: causal over real keys, plus themselves (a left-pad query otherwise sees no key at all and
        # its NaN row would reach the cache; its outputs are never used).
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        mask = (causal & attention.bool()[:, None, None, :]) | torch.eye(P, dtype=torch.bool, device=device)
        bias = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))
        return self._forward(input_ids, pos, bias)

    def _rope_table(self, L, dtype, device):
        """(cos, sin) of positions 0..L-1, (L, d), from the model's own `rotary_emb`, or None where its frequencies
        depend on the sequence length seen so far (dynamic / longrope scaling: asked again at every step). Each
        entry is the product of one frequency and one position, so the table's rows equal per-step calls exactly."""
        if getattr(self.body.rotary_emb, "rope_type", "default") not in STATIC_ROPE:
            return None
        cos, sin = self.body.rotary_emb(torch.zeros(1, dtype=dtype, device=device),
                                        torch.arange(L, device=device)[None])
        return cos[0], sin[0]

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (b,) the token just sampled for each live row."""
        self.bias[:, 0, 0, self.t] = 0.0
        pos, self.next_pos = self.next_pos, self.next_pos + 1
        return self._forward(ids[:, None], pos, self.bias[..., : self.t + 1])

    def keep(self, index: torch.Tensor) -> None:
        self.k = [k[index] for k in self.k]
        self.v = [v[index] for v in self.v]
        self.bias, self.next_pos = self.bias[index], self.next_pos[index]

    def _forward(self, ids, pos, bias):
        B, T = ids.shape
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        h = self.body.embed_tokens(ids).to(self.dtype)
        cos, sin = (self.rope[0][pos], self.rope[1][pos]) if self.rope else self.body.rotary_emb(h, pos)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d): broadcast over heads
        t0, t1 = self.t, self.t + T
        for i, w in enumerate(self.layers):
            qkv = self._norm_linear(h, w["ln1"], w["wqkv"], w["bqkv"]).view(B, T, nh + 2 * nkv, d).transpose(1, 2)
            qk = qkv[:, : nh + nkv]
            qk = qk * cos + _rotate_half(qk) * sin  # rotary on queries and keys in one pass
            self.k[i][:, :, t0:t1] = qk[:, nh:]
            self.v[i][:, :, t0:t1] = qkv[:, nh + nkv:]
            a = F.scaled_dot_product_attention(qk[:, :nh], self.k[i][:, :, :t1], self.v[i][:, :, :t1], attn_mask=bias,
                                               enable_gqa=nkv != nh)
            h = _linear(a.transpose(1, 2).reshape(B, T, nh * d), w["wo"], w["bo"], residual=h)
            g, u = self._norm_linear(h, w["ln2"], w["wgu"], w["bgu"]).chunk(2, -1)
            h = _linear(F.silu(g) * u, w["wd"], w["bd"], residual=h)
        self.t = t1
        return self._norm_linear(h[:, -1], self.final_norm, self.lm, self.lm_bias)

    # -- CUDA: one graph for every decode step, kept across rollouts
    def _capture(self) -> None:
        """Move this call's prefill into the static buffers kept for this model (`_STATIC`) and, the first time
        they exist (or when the batch size, the rounded cache length or the dtype changes), record one decode step
        as a CUDA graph over them: the token fed (`ids`), the cache slot it fills (`slot`) and its position (`pos`)
        live on the device, so a step is one replay and no host work. Later rollouts of the same shape copy their
        weights and prefill into the same buffers and replay the same graph: capturing costs more than a whole
        32-token rollout's replays. The step attends to the whole cache under the additive bias (slots not written
        by this rollout are -inf); rows are never dropped (`keep` only before), so shapes never change."""
        B, L = self.k[0].shape[0], self.k[0].shape[2]
        device = self.k[0].device
        key = (B, -(-L // STATIC_LEN_STEP) * STATIC_LEN_STEP, self.dtype, device)
        st = _STATIC.get(self.model)
        weights = {"layers": self.layers, "final_norm": self.final_norm, "lm": self.lm, "lm_bias": self.lm_bias}
        fresh = st is None or st["key"] != key or _aliases_change(st["weights"], weights) or _storage_moved(st)
        if fresh:
            Lb = key[1]
            st = {"key": key, "weights": weights, "graph": None, "logits": None,
                  "k": [torch.zeros(*k.shape[:2], Lb, k.shape[3], dtype=k.dtype, device=device) for k in self.k],
                  "v": [torch.zeros(*v.shape[:2], Lb, v.shape[3], dtype=v.dtype, device=device) for v in self.v],
                  "bias": torch.full((B, 1, 1, Lb), float("-inf"), dtype=self.dtype, device=device),
                  "ids": torch.zeros(B, dtype=torch.long, device=device),
                  "slot": torch.zeros(1, dtype=torch.long, device=device),
                  "pos": torch.zeros(B, 1, dtype=torch.long, device=device),
                  "rope": self._rope_table(Lb, self.dtype, device)}
            st["ptrs"] = [(t, t.data_ptr()) for t in [*(t for layer in self.layers for t in layer.values()),
                                                      self.final_norm, self.lm, self.lm_bias]
                          if isinstance(t, torch.nn.Parameter)]
            _STATIC[self.model] = st
        else:  # the graph reads these buffers: this call's weights go into them (the model may have trained since)
            old = st["weights"]
            for mine, theirs in zip(old["layers"], self.layers):
                for name, t in theirs.items():
                    if t is not None and t is not mine[name]:
                        mine[name].copy_(t)
            for name in ("final_norm", "lm", "lm_bias"):
                if weights[name] is not None and weights[name] is not old[name]:
                    old[name].copy_(weights[name])
        for buf, k in zip(st["k"] + st["v"], self.k + self.v):
            buf[:, :, :L].copy_(k)  # slots beyond L keep older values, masked by the bias
        st["bias"].fill_(float("-inf"))
        st["bias"][..., :L].copy_(self.bias)
        st["slot"].fill_(self.t)
        st["pos"].copy_(self.next_pos)
        w = st["weights"]
        self.layers, self.final_norm, self.lm, self.lm_bias = w["layers"], w["final_norm"], w["lm"], w["lm_bias"]
        self.k, self.v, self.bias, self.ids, self.slot, self.pos, self.rope = (
            st["k"], st["v"], st["bias"], st["ids"], st["slot"], st["pos"], st["rope"])
        if device.type == "cuda" and st["graph"] is None:
            st["graph"], st["logits"] = self._record()
        self.graph, self.logits = st["graph"], st["logits"]  # no graph on a CPU: eager static steps (tests)

    def _record(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        state = (self.slot.clone(), self.pos.clone(), self.bias.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # capture_begin/end directly: the torch.cuda.graph context also synchronises and empties the allocator's
        # device and pinned-host caches, which the training step after this rollout would pay to refill
        with torch.cuda.stream(side):
            self._static_step()  # warm-up outside the graph (lazy kernel set-up), then undone
            self.slot.copy_(state[0]), self.pos.copy_(state[1]), self.bias.copy_(state[2])
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin()
            try:
                logits = self._static_step()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(side)
        return graph, logits

    def _static_step(self) -> torch.Tensor:
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        B = self.ids.shape[0]
        self.bias.index_fill_(3, self.slot, 0.0)  # this step's key becomes visible
        h = self.body.embed_tokens(self.ids[:, None]).to(self.dtype)  # (B, 1, H)
        cos, sin = self.rope[0][self.pos][:, None], self.rope[1][self.pos][:, None]  # (B, 1, 1, d)
        for i, w in enumerate(self.layers):
            qkv = self._norm_linear(h, w["ln1"], w["wqkv"], w["bqkv"]).view(B, 1, nh + 2 * nkv, d).transpose(1, 2)
            qk = qkv[:, : nh + nkv]
            qk = qk * cos + _rotate_half(qk) * sin
            self.k[i].index_copy_(2, self.slot, qk[:, nh:])
            self.v[i].index_copy_(2, self.slot, qkv[:, nh + nkv:])
            a = F.scaled_dot_product_attention(qk[:, :nh], self.k[i], self.v[i], attn_mask=self.bias,
                                               enable_gqa=nkv != nh)
            h = _linear(a.transpose(1, 2).reshape(B, 1, nh * d), w["wo"], w["bo"], residual=h)
            g, u = self._norm_linear(h, w["ln2"], w["wgu"], w["bgu"]).chunk(2, -1)
            h = _linear(F.silu(g) * u, w["wd"], w["bd"], residual=h)
        self.slot.add_(1)
        self.pos.add_(1)
        return self._norm_linear(h[:, -1], self.final_norm, self.lm, self.lm_bias)

    @torch.inference_mode()
    def step_all(self, ids: torch.Tensor) -> torch.Tensor:
        """The static path's step: ids (B,) for EVERY row (finished ones included; their outputs are discarded).
        Returns the next logits (B, V), a buffer the next step overwrites."""
        self.ids.copy_(ids)
        if self.graph is None:
            return self._static_step()
        self.graph.replay()
        return self.logits

    def _norm_linear(self, x, g, w, b):
        """The projection w of RMSNorm(x) with weight g; with `fold`, g is already inside w."""
        if not self.fold:
            return _linear(self._norm(x, g), w, b)
        return _linear(x, w, b, norm_eps=self.eps)


_FEW_ROWS = 64  # w @ x^T measured faster up to 64 rows; at 128 F.linear is as fast or faster
_SMALL_WEIGHT = 1 << 17  # elements (512 KiB in fp32): up to this size F.linear is about as fast as the others
_KERNEL_ROWS = 16  # the C loop is faster up to 16 rows, level with w @ x^T at 32


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
            residual: torch.Tensor | None = None, norm_eps: float | None = None) -> torch.Tensor:
    """F.linear(x, w, b) (+ residual), computed another way for a decode step on a CPU. With `norm_eps`, the
    rows of x are RMS-normalised first (no weight: the caller folded it into w).

    Why: MKL's fp32 GEMM is slow when the activation side has few rows and the weight does not sit in the core's
    cache. For the benchmark model (hidden 256) the 17 matmuls of a batch-8 step took 3.6-4.8 ms as F.linear,
    2.6-3.6 ms as w @ x^T and 1.4-1.6 ms by `cpukernel` (the C loop, which also adds the residual); at 32-64 rows
    w @ x^T took 1.2-1.6x less time than F.linear. For weights up to 512 KiB (all of the demo's hidden-128 model,
    the benchmark model's o_proj) neither beat F.linear by a measurable margin in a whole rollout, so those keep
    F.linear and the demo samples exactly as before (docs/benchmarks.md, sessions 5 and 6). Same products, summed
    in another order.
    """
    rows = x.numel() // x.shape[-1]
    if rows <= _KERNEL_ROWS and w.numel() > _SMALL_WEIGHT and cpukernel.usable(x, w, b, residual):
        return cpukernel.linear(x, w, b, residual, norm_eps)
    if norm_eps is not None:
        x = F.rms_norm(x, (x.shape[-1],), None, norm_eps)
    if w.numel() <= _SMALL_WEIGHT or rows > _FEW_ROWS or x.device.type != "cpu":
        out = F.linear(x, w, b)
    else:
        out = torch.mm(w, x.reshape(rows, x.shape[-1]).t()).t()
        if b is not None:
            out = out + b
        out = out.reshape(*x.shape[:-1], w.shape[0])
    return out if residual is None else residual + out


def _rotate_half(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)
