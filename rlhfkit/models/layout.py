"""Micro-batch layouts and the forwards over them.

A prefix-shared layout (`build_layout`) holds a micro-batch as rows of [prompt | completion_1 | completion_2 ...]
blocks under block masks, so a prompt is forwarded once for all its completions; the language-model head is then
applied only where a log-prob is needed (completion tokens): for a small model with a 2k vocabulary the head is a
quarter of the FLOPs, and prompts are often half the tokens. The packed layout (`build_packed`, `Packed`) holds
the same micro-batch as every real token once in one sequence, attending by document. `use_packed` is the one seam
between the two. The attention both run is in `modeling` (`_rows_attention`, `docs_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.models.modeling import UNPADDED_MODEL_TYPES, backbone, padding_free


# ----------------------------------------------------------------------------------------------- prefix-shared layout
@dataclass
class Layout:
    """A micro-batch as rows of [prompt | completion_1 | completion_2 ...] blocks, with everything the forward
    needs. Sequence numbering: see `build_layout` (by default s = j * n_items + i is completion j of item i, so a
    pair's chosen = [:n], rejected = [n:])."""

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L); -1 at padding
    mask: torch.Tensor  # (R, 1, L, L) bool, True = may attend
    src: torch.Tensor  # (N,) flat index into (R*L) of the hidden state that predicts each completion token
    labels: torch.Tensor  # (N,) the completion token ids
    seq: torch.Tensor  # (N,) which sequence each token belongs to
    n_seqs: int
    lengths: torch.Tensor  # (n_seqs,) completion tokens per sequence
    tokens: int  # non-pad tokens in the rows (what the model really processes)
    last: torch.Tensor  # (n_seqs,) flat index into (R*L) of each sequence's final token (a scalar head reads it)
    prompt_at: torch.Tensor  # (n_items,) item i's first prompt token among the real tokens (row-major, no padding)
    packed: "Packed | None" = None  # `build_packed`: the batch packed; input_ids, position_ids and mask are None


def default_slots(items: list[tuple[list[int], list[list[int]]]]) -> list[list[int]]:
    """The default sequence numbering of a layout: completion j of item i is sequence j * len(items) + i (so a pair's
    chosen are [:n] and rejected [n:]); every item must have the same number of completions."""
    n, k = len(items), len(items[0][1])
    if any(len(cs) != k for _, cs in items):
        raise ValueError("items with different completion counts need explicit slots")
    return [[j * n + i for j in range(k)] for i in range(n)]


def build_layout(items: list[tuple[list[int], list[list[int]]]], pad_id: int, packing: bool = True,
                 slots: list[list[int]] | None = None) -> Layout:
    """items: (prompt, [completions]): several completions that share one prompt.

    Each block is [prompt | c_1 | ... | c_k]: prompt tokens attend causally; completion j attends to the whole prompt
    and causally to itself, never to another completion; its positions continue from the prompt's (P, P+1, ...),
    exactly as in a separate row prompt + c_j. The token c_j[0] is predicted by the last prompt token's hidden
    state, c_j[t] by c_j[t-1]'s. Blocks are packed into rows of capacity = the longest block (first-fit
    decreasing) when `packing`, else one per row; padding only at row ends and attends only to itself.

    Completion j of item i becomes sequence `slots[i][j]` (a numbering of all completions 0..total-1); without
    `slots` every item must have the same number k of completions and it is j * len(items) + i.
    """
    n = len(items)
    slots = slots or default_slots(items)
    n_seqs = sum(len(cs) for _, cs in items)
    sizes = [len(p) + sum(len(c) for c in cs) for p, cs in items]
    cap = max(sizes)
    rows: list[list[int]] = []  # item indices per row
    room: list[int] = []
    for i in sorted(range(n), key=lambda i: -sizes[i]):
        r = next((r for r in range(len(rows)) if room[r] >= sizes[i]), None) if packing else None
        if r is None:
            rows.append([])
            room.append(cap)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= sizes[i]
    R, L = len(rows), cap
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.full((R, L), -1, dtype=torch.long)  # -1 marks padding (layout_hidden_states drops it)
    mask = torch.eye(L, dtype=torch.bool).repeat(R, 1, 1, 1)  # (R, 1, L, L); padding attends to itself only
    src, labels, seq = [], [], []
    lengths = torch.zeros(n_seqs, dtype=torch.long)
    last = torch.zeros(n_seqs, dtype=torch.long)
    prompt_at = torch.zeros(n, dtype=torch.long)
    real_before = 0  # real tokens in the rows before this one
    for r, members in enumerate(rows):
        o = 0
        for i in members:
            prompt, comps = items[i]
            P = len(prompt)
            prompt_at[i] = real_before + o
            input_ids[r, o:o + P] = torch.tensor(prompt)
            position_ids[r, o:o + P] = torch.arange(P)
            mask[r, 0, o:o + P, o:o + P] = torch.ones(P, P, dtype=torch.bool).tril()
            c0 = o + P
            for j, c in enumerate(comps):
                C, s = len(c), slots[i][j]
                input_ids[r, c0:c0 + C] = torch.tensor(c)
                position_ids[r, c0:c0 + C] = torch.arange(P, P + C)
                mask[r, 0, c0:c0 + C, o:o + P] = True
                mask[r, 0, c0:c0 + C, c0:c0 + C] = torch.ones(C, C, dtype=torch.bool).tril()
                base = r * L
                src += [base + o + P - 1] + [base + c0 + t for t in range(C - 1)]
                labels += c
                seq += [s] * C
                lengths[s] = C
                last[s] = base + c0 + C - 1
                c0 += C
            o = c0
        real_before += o
    return Layout(input_ids, position_ids, mask, torch.tensor(src), torch.tensor(labels), torch.tensor(seq), n_seqs,
                  lengths, sum(sizes), last, prompt_at)


def layout_hidden_states(model: torch.nn.Module, lay_input_ids: torch.Tensor, position_ids: torch.Tensor,
                         mask: torch.Tensor, save_kv: dict | None = None,
                         needed: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (R*L, H) of a `build_layout` micro-batch, flattened so `src` / `last` index them; with
    `needed` (flat indices into (R*L), such as `src`), only those: (len(needed), H), the same values.

    Padding-free where the model allows (`padding_free`): the rows' real tokens (position >= 0; padding is only at
    row ends) go through the model as one sequence, row r attending within itself under mask[r]; padding rows get
    zeros. There the last decoder layer's MLP runs only on the needed tokens (`_keep_forward`). Otherwise the padded
    rows go through with the 4-D mask (padding attends to itself; outputs unused).
    `save_kv` (padding-free only): a dict that receives every layer's keys and values, indexed by real token (the
    layout's non-padding tokens in row-major order), for `continuation_hidden_states`."""
    body = backbone(model)
    R, L = lay_input_ids.shape
    if not padding_free(body):
        if save_kv is not None:
            raise ValueError(f"save_kv needs a padding-free model family {UNPADDED_MODEL_TYPES}")
        h = body(input_ids=lay_input_ids, attention_mask=mask, position_ids=position_ids.clamp(min=0),
                 use_cache=False).last_hidden_state  # (R, L, H)
        h = h.reshape(-1, h.shape[-1])
        return h if needed is None else h.index_select(0, needed)
    real = position_ids >= 0
    keep = real.reshape(-1).nonzero().squeeze(1)
    rows, start = [], 0
    for r, n in enumerate(real.sum(1).tolist()):
        rows.append((start, start + n, mask[r:r + 1, :, :n, :n], None))
        start += n
    kept = inverse = None
    if needed is not None:  # needed flat slots -> their indices among the real tokens, each token once
        real_index = torch.full((R * L,), -1, dtype=torch.long, device=keep.device)
        real_index[keep] = torch.arange(len(keep), device=keep.device)
        kept, inverse = torch.unique(real_index[needed], return_inverse=True)
        if kept[0] < 0:
            raise ValueError("layout_hidden_states: `needed` points at padding")
    # a 4-D attention_mask is passed through untouched, so transformers builds no (T, T) mask we would not use
    h = body(input_ids=lay_input_ids.reshape(-1)[keep][None], position_ids=position_ids.reshape(-1)[keep][None],
             attention_mask=mask[:1, :, :1, :1], use_cache=False, rlhfkit_rows=rows,
             rlhfkit_save_kv=save_kv, rlhfkit_keep=kept).last_hidden_state[0]
    if needed is not None:
        return h.index_select(0, inverse)  # (see _keep_forward on index_select)
    return h.new_zeros(R * L, h.shape[-1]).index_copy(0, keep, h)


def continuation_hidden_states(model: torch.nn.Module, saved_kv: dict,
                               runs: list[tuple[torch.Tensor, list[int], int]]) -> torch.Tensor:
    """Last hidden states (T, H) of token runs that continue prefixes of an earlier padding-free layout forward,
    from the keys and values it saved (`layout_hidden_states(..., save_kv=saved_kv)`) instead of recomputing them.

    runs: (prefix, tokens, position): `prefix` indexes the earlier forward's real tokens (a run's context, in order),
    `tokens` continue it from `position` on. Each run attends to its whole prefix and causally to itself; the
    outputs are the runs' tokens concatenated. Exact, as decoding from a KV cache is: same model, same weights."""
    body = backbone(model)
    dev = next(body.parameters()).device
    ids, pos, rows, start = [], [], [], 0
    for prefix, tokens, p0 in runs:
        n, k = len(tokens), len(prefix)
        m = torch.ones(1, 1, n, k + n, dtype=torch.bool)
        m[..., k:] = torch.ones(n, n, dtype=torch.bool).tril()
        rows.append((start, start + n, m.to(dev), prefix.to(dev)))
        ids += tokens
        pos += range(p0, p0 + n)
        start += n
    return body(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([pos], device=dev),
                attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev), use_cache=False,
                rlhfkit_rows=rows, rlhfkit_prefix_kv=saved_kv).last_hidden_state[0]


def shared_prompt_layout(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                         packed: bool = False) -> Layout:
    """Sequences given as (prompt, completion) token lists, as a prefix-shared layout: sequences with identical
    prompt tokens form one block, so each distinct prompt is forwarded once. Sequence i of the layout is
    (prompts[i], completions[i]). `packed`: as `build_packed` (see `use_packed`)."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    items = [(list(p), [completions[i] for i in members]) for p, members in groups.items()]
    if packed:
        return build_packed(items, slots=list(groups.values()))
    return build_layout(items, pad_id, packing=True, slots=list(groups.values()))


def rows_layout(input_ids: torch.Tensor, target_mask: torch.Tensor, pad_id: int,
                packed: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded rows (B, T) of prompt + response (the response where `target_mask`, contiguous after the prompt),
    as a prefix-shared layout: rows with identical prompt tokens (the G samples of one prompt) form one block, so
    the prompt is forwarded once. Returns build_layout's tensors plus `dest`, the flat index into (B, T-1) of each
    response token's log-prob: `TokenLogprobs(..., layout=...)` then returns exactly the padded path's outputs."""
    B, T = input_ids.shape
    ids, tm = input_ids.tolist(), target_mask.tolist()
    # prompt length >= 1 per row: its last token predicts the first response token
    starts = [row.index(True) for row in tm]
    lay = shared_prompt_layout([ids[b][:starts[b]] for b in range(B)],
                               [ids[b][starts[b]:starts[b] + sum(tm[b])] for b in range(B)], pad_id, packed)
    n_tok = lay.seq.shape[0]
    first = torch.full((B,), n_tok, dtype=torch.long).scatter_reduce(0, lay.seq, torch.arange(n_tok), "amin")
    t = torch.arange(n_tok) - first[lay.seq]  # index of each token within its response
    dest = lay.seq * (T - 1) + torch.tensor(starts)[lay.seq] - 1 + t
    dev = input_ids.device
    if packed:
        return {"packed": lay.packed.with_needed(lay.src).to(dev), "labels": to_device(lay.labels, dev),
                "dest": to_device(dest, dev)}
    return {"input_ids": lay.input_ids.to(dev), "position_ids": lay.position_ids.to(dev), "mask": lay.mask.to(dev),
            "src": lay.src.to(dev), "labels": lay.labels.to(dev), "dest": dest.to(dev)}


# ----------------------------------------------------------------------------------------------- the packed layout (GPU)
def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device`. A host tensor bound for CUDA is pinned and copied asynchronously: a copy from pageable
    memory makes the host wait until the device's queue has drained, once per tensor."""
    device = torch.device(device)
    if t.device == device or (device.type == "cuda" and t.is_cuda and device.index is None):
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def use_packed(model: torch.nn.Module, device) -> bool:
    """The one seam between the two layouts. On a CPU with rlhfkit's compiled kernels, micro-batches run as padded
    rows under block masks (`build_layout`; the C block attention skips masked tiles). Everywhere else (CUDA, or a
    CPU without the kernels) they run packed: every real token once in one sequence, attention by documents
    (`Packed`), so no dense mask is built, no Python loop runs over rows, and on CUDA the attention is one
    FlashAttention varlen call per layer. Only model families whose decoder passes keyword arguments down to the
    attention (`UNPADDED_MODEL_TYPES`) can run packed; others keep padded rows."""
    from rlhfkit.kernels import cpukernel

    if not padding_free(backbone(model)):
        return False
    return torch.device(device).type != "cpu" or not cpukernel.available()


@dataclass
class Packed:
    """Every real token of a micro-batch once, as one sequence (1, T), and how attention sees them: document d is
    the token run `doc_index[cu[d]:cu[d+1]]` (identity when `doc_index` is None), causal within itself; token t's
    attention output is row `out_index[t]` of the documents' outputs (identity when None). A prompt shared by k
    completions is one run of tokens in the linear layers but sits in k documents ([prompt | completion_j]): its
    keys and values are gathered into each, its own outputs read from the first. That is exactly the attention of k
    separate rows prompt + completion_j, with the prompt's projections and MLPs computed once.

    `keep` / `inverse` (optional): the sorted distinct tokens whose last hidden state is needed and, for each
    requested position, its index in `keep` (the last layer's MLP then runs on `keep` alone, `_keep_forward`)."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    cu_seqlens: torch.Tensor  # (D+1,) int32, cumulative document lengths
    max_len: int
    pad_index: torch.Tensor  # (T_att,) slot of each document row in a (D, max_len) padding, for non-flash attention
    doc_index: torch.Tensor | None = None  # (T_att,)
    out_index: torch.Tensor | None = None  # (T,)
    keep: torch.Tensor | None = None
    inverse: torch.Tensor | None = None

    def to(self, device) -> "Packed":
        """A copy on `device` (`to_device`)."""
        return Packed(**{k: (to_device(v, device) if isinstance(v, torch.Tensor) else v)
                         for k, v in self.__dict__.items()})

    def with_needed(self, needed: torch.Tensor) -> "Packed":
        """The same batch, asking for the last hidden states at `needed` (indices into the T tokens)."""
        keep, inverse = torch.unique(needed, return_inverse=True)
        return Packed(**{**self.__dict__, "keep": keep, "inverse": inverse})


def pack_documents(ids: list[int], pos: list[int], docs: list[list[int]] | None, lengths: list[int],
                   out_index: list[int] | None) -> Packed:
    """A `Packed` from token ids and positions, and its documents: `docs` (lists of token indices, or None when the
    documents are consecutive runs of `lengths` tokens) and `out_index` (None: identity)."""
    cu = torch.tensor([0] + lengths, dtype=torch.long).cumsum(0)
    max_len = max(lengths)
    n_att = int(cu[-1])
    doc_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths), output_size=n_att)
    pad_index = doc_of * max_len + torch.arange(n_att) - cu[doc_of]
    return Packed(torch.tensor([ids]), torch.tensor([pos]), cu.to(torch.int32), max_len, pad_index,
                  None if docs is None else torch.tensor([t for d in docs for t in d]),
                  None if out_index is None else torch.tensor(out_index))


_ONE = {}


def packed_hidden_states(model: torch.nn.Module, packed: Packed) -> torch.Tensor:
    """Last hidden states of a packed micro-batch (already on the model's device): (T, H), or (len(inverse), H) for
    the requested positions when `packed.keep` is set."""
    body = backbone(model)
    if not padding_free(body):
        raise ValueError(f"packed forwards need a model family in {UNPADDED_MODEL_TYPES}")
    dev = packed.input_ids.device
    if dev not in _ONE:
        _ONE[dev] = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev)
    # a 4-D attention_mask is passed through untouched, so transformers builds no (T, T) mask
    h = body(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=_ONE[dev], use_cache=False,
             rlhfkit_docs=packed, rlhfkit_keep=packed.keep).last_hidden_state[0]
    return h if packed.inverse is None else h.index_select(0, packed.inverse)


def build_packed(items: list[tuple[list[int], list[list[int]]]], slots: list[list[int]] | None = None) -> "Layout":
    """`build_layout`'s micro-batch as a `Packed` (in `Layout.packed`): the same sequence numbering, labels, lengths
    and prompt offsets; `src` and `last` index the packed tokens. No rows, no masks."""
    n = len(items)
    slots = slots or default_slots(items)
    n_seqs = sum(len(cs) for _, cs in items)
    ids: list[int] = []
    pos: list[int] = []
    docs: list[list[int]] = []
    doc_len: list[int] = []
    out_index: list[int] = []
    src: list[int] = []
    labels: list[int] = []
    seq: list[int] = []
    lengths = torch.zeros(n_seqs, dtype=torch.long)
    last = torch.zeros(n_seqs, dtype=torch.long)
    prompt_at = torch.zeros(n, dtype=torch.long)
    n_att = 0  # document rows so far
    for i, (prompt, comps) in enumerate(items):
        P, p0 = len(prompt), len(ids)
        prompt_at[i] = p0
        ids += prompt
        pos += range(P)
        out_index += range(n_att, n_att + P)  # the prompt's own outputs: its first document's
        for j, c in enumerate(comps):
            C, s, c0 = len(c), slots[i][j], len(ids)
            ids += c
            pos += range(P, P + C)
            docs.append(list(range(p0, p0 + P)) + list(range(c0, c0 + C)))
            doc_len.append(P + C)
            out_index += range(n_att + P, n_att + P + C)
            n_att += P + C
            src += [p0 + P - 1] + list(range(c0, c0 + C - 1))
            labels += c
            seq += [s] * C
            lengths[s] = C
            last[s] = c0 + C - 1
    identity = all(len(cs) <= 1 for _, cs in items)
    packed = pack_documents(ids, pos, None if identity else docs, doc_len, None if identity else out_index)
    return Layout(None, None, None, torch.tensor(src), torch.tensor(labels), torch.tensor(seq), n_seqs, lengths,
                  len(ids), last, prompt_at, packed)


def sequences_layout(input_ids: torch.Tensor, attention: torch.Tensor, target_mask: torch.Tensor) -> dict:
    """Right-padded rows (B, T) as a packed micro-batch with no sharing: each row's real tokens one document. For
    `TokenLogprobs(..., layout=...)`: `packed` (asking for the positions that predict a target), `labels`, and
    `dest`, the flat index into (B, T-1) of each target's log-prob. Built on the host, with no device work."""
    B, T = input_ids.shape
    n = attention.sum(1)
    real = attention.reshape(-1).nonzero().squeeze(1)
    flat_ids = input_ids.reshape(-1)[real]
    flat_pos = (attention.long().cumsum(1) - 1).reshape(-1)[real]
    # target (b, t+1) is predicted by (b, t); its packed index is real-index of (b, t)
    tgt = target_mask[:, 1:] & attention[:, 1:]
    dest = tgt.reshape(-1).nonzero().squeeze(1)  # flat into (B, T-1)
    b, t = dest // (T - 1), dest % (T - 1)
    packed_index = torch.full((B * T,), -1, dtype=torch.long)
    packed_index[real] = torch.arange(len(real))
    src = packed_index[b * T + t]
    packed = pack_documents(flat_ids.tolist(), flat_pos.tolist(), None, n.tolist(), None)
    return {"packed": packed.with_needed(src), "labels": input_ids[b, t + 1], "dest": dest}


def make_layout(items: list[tuple[list[int], list[list[int]]]], pad_id: int, packing: bool, packed: bool) -> Layout:
    """A micro-batch's layout: packed (every token once, attention by documents; `use_packed`) or rows under block
    masks (the CPU's, with `packing` putting several items in a row)."""
    return build_packed(items) if packed else build_layout(items, pad_id, packing)
