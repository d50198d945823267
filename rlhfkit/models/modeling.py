"""The model-level plumbing the trainers' forwards share: positions, the transformer body behind a (peft) wrapper,
LoRA's adapters switched off for a reference, and the attention that padding-free layout forwards run.

Position ids are always derived from the attention mask, so left-padded (generation) and right-padded
(training) batches give a token the same position and therefore the same log-prob (PITFALLS PPO #6).

Prefix-shared layouts (`layout.build_layout`) run padding-free on the model families in `UNPADDED_MODEL_TYPES`: the
rows are concatenated without the padding at their ends into one sequence, so the linear layers see only real
tokens, and each row attends within itself under its own block mask (`_rows_attention`, registered with
transformers' `AttentionInterface`; the model's own forward runs unchanged). On fp32 CPU tensors that attention is
one C call per layer that skips the score tiles the masks exclude (`fusedops.BlockAttention`); otherwise SDPA per
row. Packed micro-batches (`layout.Packed`) attend by document (`docs_attention`: FlashAttention varlen on CUDA in
bf16/fp16, one padded-documents SDPA call elsewhere).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rlhfkit.kernels import fusedops

if TYPE_CHECKING:
    from rlhfkit.models.layout import Packed


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting only real tokens; padding gets 0 (its outputs are never used)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model (LoRA adapters injected into its base model's linear layers)."""
    peft = sys.modules.get("peft")  # never imported here: a model can only be a PeftModel once peft is loaded
    return peft is not None and isinstance(model, peft.PeftModel)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module | None):
    """Run `model` as its base model: a peft model with its adapters switched off (peft's `disable_adapter()`),
    which is exactly the frozen weights the adapters were added to. Anything else runs as it is. This is how a
    LoRA run's reference policy is the policy itself, with no second copy in memory."""
    if model is not None and is_lora(model):
        with model.disable_adapter():
            yield
    else:
        yield


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a *ForCausalLM / *ForSequenceClassification model (model.model for Llama). A peft
    model is looked through to its base model: the adapters live inside the base model's modules, so the body found
    there runs with them (and without them under `adapters_disabled`). The wrapper's own `base_model_prefix` would
    name the whole causal LM, not its body."""
    if is_lora(model):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


# Families whose decoder passes the forward's keyword arguments down to the attention function (so `_rows_attention`
# receives `rlhfkit_rows`); checked against the padded path in tests/test_modeling.py. Others use padded rows.
UNPADDED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROWS_ATTENTION = "rlhfkit_sdpa"


def _rows_attention(module, query, key, value, attention_mask, rlhfkit_rows=None, rlhfkit_save_kv=None,
                    rlhfkit_prefix_kv=None, rlhfkit_docs=None, **kwargs):
    """transformers' SDPA attention, except in a padding-free layout forward (`rlhfkit_rows` given): there the
    (1, heads, T, d) inputs are the layout's rows concatenated without their padding, and row (start, end, mask,
    prefix) attends only within itself under its (1, 1, n, n) block mask. Returns (1, T, heads, d), as SDPA's does.

    A forward given a dict `rlhfkit_save_kv` leaves each layer's keys and values there (detached, by layer index).
    A later forward given that dict as `rlhfkit_prefix_kv` may continue from them: a row whose `prefix` holds indices
    into the saved sequence attends to those keys first, then to its own (mask (1, 1, n, len(prefix) + n)), as a
    decoder continues from a KV cache, several tokens at a time."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if rlhfkit_docs is not None:  # a packed forward (`Packed`)
        return docs_attention(query, key, value, rlhfkit_docs, kwargs.get("scaling") or query.shape[-1] ** -0.5,
                              kwargs.get("dropout", 0.0)), None
    if rlhfkit_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if rlhfkit_save_kv is not None:
        rlhfkit_save_kv[module.layer_idx] = (key.detach(), value.detach())
    if all(prefix is None for *_, prefix in rlhfkit_rows) and \
            fusedops.block_attention_usable(query, key, value, kwargs.get("dropout", 0.0), rlhfkit_rows):
        # fp32 on the CPU: one C call for all rows, computing only the score tiles the masks let through
        scale = kwargs.get("scaling") or query.shape[-1] ** -0.5
        return fusedops.BlockAttention.apply(query, key, value, [(a, b, m[0, 0]) for a, b, m, _ in rlhfkit_rows],
                                             scale), None
    # The rows tile the sequence in order, so one split per tensor cuts them (its backward is one cat; slicing
    # each row instead would zero-fill a full-size gradient per row and add them up).
    sizes = [b - a for a, b, _, _ in rlhfkit_rows]
    out = []
    for q, k, v, (_, _, m, prefix) in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2),
                                          rlhfkit_rows):
        if prefix is not None:
            saved_k, saved_v = rlhfkit_prefix_kv[module.layer_idx]
            k, v = torch.cat([saved_k[:, :, prefix], k], 2), torch.cat([saved_v[:, :, prefix], v], 2)
        out.append(sdpa_attention_forward(module, q, k, v, m, **kwargs)[0])
    return torch.cat(out, 1), None


@functools.cache
def _register_rows_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ROWS_ATTENTION, _rows_attention)
    AttentionMaskInterface.register(ROWS_ATTENTION, sdpa_mask)  # every other forward: exactly SDPA's masks


def _keep_forward(self, hidden_states: torch.Tensor, *args, rlhfkit_keep: torch.Tensor | None = None, **kwargs):
    """The last decoder layer's forward (the same in every family of UNPADDED_MODEL_TYPES). Given `rlhfkit_keep`
    (sorted indices into the sequence), it returns only those tokens' outputs: every token's keys and values still
    enter the attention, but the other tokens' residual stream ends here, so their MLP is skipped. Tokens whose
    last hidden state nobody reads (prompt tokens that predict no scored token) are ~25% of a DPO step's."""
    if rlhfkit_keep is None:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    if args:  # transformers passes everything but the hidden states by keyword
        raise TypeError("rlhfkit_keep needs the decoder layer's other arguments by keyword")
    attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
    # index_select, not h[:, keep]: its backward is an index_add, ~4x faster here than advanced indexing's index_put
    h = hidden_states.index_select(1, rlhfkit_keep) + attn.index_select(1, rlhfkit_keep)
    return h + self.mlp(self.post_attention_layernorm(h))


def _layout_attention_forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                              past_key_values=None, **kwargs):
    """The attention module's forward (the same in every family of UNPADDED_MODEL_TYPES, Qwen3 adding q_norm and
    k_norm), except in a padding-free layout forward (`rlhfkit_rows` given). There, on fp32 CPU tensors that the C
    kernel takes, q and k go to `fusedops.BlockAttention` before their rotary embedding, which the kernel applies as
    it reads them: transformers' apply_rotary_pos_emb is ~10 elementwise passes forward and backward (~5% of a DPO
    step on the benchmark model). Otherwise they are rotated by the family's own function and go to
    `_rows_attention`, as in transformers' forward."""
    rows = kwargs.get("rlhfkit_rows")
    if rows is None or past_key_values is not None or position_embeddings is None:
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    q, k, v = self.q_proj(hidden_states).view(shape), self.k_proj(hidden_states).view(shape), \
        self.v_proj(hidden_states).view(shape)
    if hasattr(self, "q_norm"):  # Qwen3: RMSNorm over each head's query and key
        q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = position_embeddings
    family = importlib.import_module(type(self).__module__)
    dropout = self.attention_dropout if self.training else 0.0
    save_kv = kwargs.get("rlhfkit_save_kv")
    if (all(prefix is None for *_, prefix in rows) and cos.shape == (1, q.shape[2], q.shape[3])
            and fusedops.block_attention_usable(q, k, v, dropout, rows)):
        if save_kv is not None:  # continuations need the rotated keys, as transformers' forward would save them
            with torch.no_grad():  # apply_rotary_pos_emb's formula, for k alone
                k_rot = (k * cos.unsqueeze(1)) + (family.rotate_half(k) * sin.unsqueeze(1))
            save_kv[self.layer_idx] = (k_rot, v.detach())
        out = fusedops.BlockAttention.apply(q, k, v, [(a, b, m[0, 0]) for a, b, m, _ in rows], self.scaling, cos, sin)
    else:
        q, k = family.apply_rotary_pos_emb(q, k, cos, sin)
        out, _ = _rows_attention(self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
    return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1)), None


def padding_free(body: torch.nn.Module) -> bool:
    """Whether layout forwards of this transformer body run padding-free. Switches an SDPA model to the same SDPA
    attention with row support (identical outside layout forwards; the name is not saved with the model), and gives
    its last decoder layer `_keep_forward` (identical unless a layout forward asks for some tokens only) and its
    attention modules `_layout_attention_forward` (identical outside layout forwards)."""
    cfg = body.config
    if getattr(cfg, "model_type", None) not in UNPADDED_MODEL_TYPES:
        return False
    if cfg._attn_implementation == "sdpa":
        _register_rows_attention()
        cfg._attn_implementation = ROWS_ATTENTION
    if cfg._attn_implementation != ROWS_ATTENTION:
        return False
    last = body.layers[cfg.num_hidden_layers - 1]
    if "forward" not in last.__dict__:
        last.forward = types.MethodType(_keep_forward, last)
        for layer in body.layers:
            layer.self_attn.forward = types.MethodType(_layout_attention_forward, layer.self_attn)
    return True


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  packed_position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (B, T, H).

    Padded batches pass an attention mask. Packed batches (several sequences concatenated in one row, no padding)
    pass `packed_position_ids` that restart at 0 for each sequence and no attention mask: transformers then
    builds a block-diagonal causal mask, so packed sequences never attend to each other.
    """
    if packed_position_ids is not None:
        out = backbone(model)(input_ids=input_ids, position_ids=packed_position_ids, use_cache=False)
    else:
        out = backbone(model)(input_ids=input_ids, attention_mask=attention_mask.long(),
                              position_ids=position_ids(attention_mask), use_cache=False)
    return out.last_hidden_state


# ----------------------------------------------------------------------------------------------- packed attention
def docs_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, docs: Packed, scale: float,
                   dropout: float = 0.0) -> torch.Tensor:
    """Causal attention within each document of `docs`. query/key/value (1, heads, T, d) as transformers passes
    them (keys and values may have fewer heads: grouped-query attention); returns (1, T, heads, d)."""
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, heads, d)
    if docs.doc_index is not None:
        q, k, v = (x.index_select(0, docs.doc_index) for x in (q, k, v))
    if k.shape[1] != q.shape[1]:  # transformers' repeat_kv: each key/value head serves consecutive query heads
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if _varlen_usable(q, dropout):
        out = _varlen(q, k, v, docs.cu_seqlens, docs.max_len, scale)
    else:
        out = _padded_docs_attention(q, k, v, docs, scale, dropout)
    if docs.out_index is not None:
        out = out.index_select(0, docs.out_index)
    return out[None]


@functools.cache
def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    import inspect

    params = inspect.signature(varlen_attn).parameters
    if "scale" not in params:
        return None
    # torch 2.10 spells causal `is_causal=True`; later releases as the window (-1, 0) (any key up to the query)
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return functools.partial(varlen_attn, **causal)


def _varlen_usable(q: torch.Tensor, dropout: float) -> bool:
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and not dropout and _varlen_fn() is not None


def _varlen(q, k, v, cu: torch.Tensor, max_len: int, scale: float) -> torch.Tensor:
    """FlashAttention over variable-length documents (torch.nn.attention.varlen): no padding, no mask."""
    return _varlen_fn()(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, scale=scale)


def _padded_docs_attention(q, k, v, docs: Packed, scale: float, dropout: float) -> torch.Tensor:
    """The same attention where FlashAttention's varlen kernel does not apply (a CPU, fp32): documents scattered
    into (D, heads, max_len, d) zero padding, one causal SDPA call (a document's rows never see the padding after
    it), read back. No mask tensor and no loop over documents."""
    D, L = docs.cu_seqlens.numel() - 1, docs.max_len

    def padded(x):  # (T_att, heads, d) -> (D, heads, L, d)
        return x.new_zeros(D * L, *x.shape[1:]).index_copy(0, docs.pad_index, x).view(D, L, *x.shape[1:]).transpose(1, 2)

    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), dropout_p=dropout, is_causal=True,
                                         scale=scale)  # (D, heads, L, d)
    return out.transpose(1, 2).reshape(D * L, *q.shape[1:]).index_select(0, docs.pad_index)
