"""The log-prob forwards the trainers share: token log-probs of selected positions (`TokenLogprobs`: SFT, PPO, GRPO,
evaluation) and summed completion log-probs over a layout (`SequenceLogprobs`: DPO and its family, KTO).

The language-model head runs only at the positions whose log-prob is needed. Where it is a plain bias-free linear
layer, `linear_logprobs` fuses it with the log-softmax and keeps no (N, V) buffer beyond the logits for the
backward; on fp32 CPU logits its log-sum-exp and gradient are rlhfkit's compiled loops (`kernels.cpukernel`). The
pure-torch reference of that math is `math.logprobs.token_logprobs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit import data as data_lib
from rlhfkit.kernels import cpukernel
from rlhfkit.math.logprobs import compute_dtype
from rlhfkit.models.layout import (
    Layout, continuation_hidden_states, layout_hidden_states, packed_hidden_states, to_device,
)
from rlhfkit.models.modeling import hidden_states


class TokenLogprobs(torch.nn.Module):
    """Wraps a causal LM: forward returns log p(x_{t+1} | x_<=t) at the positions where `target_mask` is True.

    Output shapes follow the DESIGN.md convention: (B, T-1), aligned with input_ids[:, 1:], zero where the
    mask is False. Logits are divided by `temperature` before the softmax so log-probs match what the sampler
    drew from (PITFALLS PPO #7). Wrapping the whole computation in one module lets DDP see one forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, target_mask, temperature: float = 1.0, with_entropy: bool = False,
                packed_position_ids=None, layout: dict | None = None):
        """`layout` (from `rows_layout(input_ids, target_mask, ...)` or `sequences_layout`): forward the same rows
        prompt-shared or packed instead; the outputs are the same (B, T-1) tensors."""
        mask = target_mask[:, 1:] if target_mask.shape[1] == input_ids.shape[1] else target_mask
        if layout is None:
            h = hidden_states(self.model, input_ids, attention_mask, packed_position_ids)[:, :-1][mask]  # (N, H)
            targets = input_ids[:, 1:][mask]
        elif "packed" in layout:
            h = packed_hidden_states(self.model, layout["packed"])
            targets = layout["labels"]
        else:
            h = layout_hidden_states(self.model, layout["input_ids"], layout["position_ids"], layout["mask"],
                                     needed=layout["src"])
            targets = layout["labels"]
        logits = self.model.get_output_embeddings()(h).float()  # (N, V) only where needed
        if temperature != 1.0:  # x / 1.0 == x exactly: skip a pass over (N, V) and its backward
            logits = logits / temperature
        logz = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz

        def place(values: torch.Tensor) -> torch.Tensor:  # (N,) -> (B, T-1), zero off the mask
            out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
            if layout is None:
                return out.masked_scatter(mask, values)
            return out.view(-1).index_put((layout["dest"],), values).view(mask.shape)

        out = {"logprobs": place(picked)}
        if with_entropy:
            p = F.softmax(logits, dim=-1)
            out["entropy"] = place(logz - (p * logits).sum(-1))
        return out


# ----------------------------------------------------------------------------------------------- LM head log-probs
def _fast_rows(logits: torch.Tensor) -> bool:
    return (logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2
            and logits.is_contiguous() and cpukernel.available())


class _LinearLogprobs(torch.autograd.Function):
    """log softmax(h @ weight^T)[labels] with a lean backward: the (N, V) logits are the only (N, V) buffer kept,
    and the backward turns them into their own gradient in place, softmax - onehot(labels), scaled per row."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(h, weight).to(compute_dtype(h.dtype))  # (N, V)
        # fp32 on the CPU: the C passes (two reads, no (N, V) temporary; docs/benchmarks.md)
        ctx.fast = _fast_rows(logits)
        logz = cpukernel.logsumexp_rows(logits) if ctx.fast else torch.logsumexp(logits, dim=-1)  # (N,)
        ctx.save_for_backward(h, weight, labels, logz)
        ctx.logits = logits  # not saved through autograd: the backward overwrites it
        return logits.gather(-1, labels[:, None]).squeeze(-1) - logz

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight, labels, logz = ctx.saved_tensors
        logits, ctx.logits = ctx.logits, None
        if logits is None:
            raise RuntimeError("linear_logprobs: backward through the same graph twice is not supported")
        # d logp_i / d z_ij = onehot_ij - softmax_ij (the usual log-softmax gradient)
        if ctx.fast:
            grad_logits = cpukernel.logsoftmax_grad_rows_(logits, logz, grad, labels)
        else:
            grad_logits = logits.sub_(logz[:, None]).exp_().mul_(-grad[:, None])
            grad_logits[torch.arange(len(labels), device=labels.device), labels] += grad
        grad_logits = grad_logits.to(h.dtype)
        return grad_logits @ weight.to(h.dtype), (grad_logits.t() @ h).to(weight.dtype), None


def linear_logprobs(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) log softmax(h @ weight^T)[labels] for hidden states h (N, H), an LM head's weight (V, H) and labels (N,),
    computed in at least float32. Equal to `token_logprobs(F.linear(h, weight), labels)`, but its backward needs
    no (N, V) buffer beyond the logits themselves (autograd's keeps three: the logits, exp(z - logZ) and the gather's
    zero-filled gradient), which cuts a DPO step of the benchmark model by ~7 ms of ~340 (docs/benchmarks.md).
    Labels must be valid token ids (no -100)."""
    if h.dim() != 2 or labels.shape != h.shape[:1]:
        raise ValueError(f"h {tuple(h.shape)} must be (N, H) and labels {tuple(labels.shape)} (N,)")
    return _LinearLogprobs.apply(h, weight, labels)


# ----------------------------------------------------------------------------------------------- summed log-probs
class SequenceLogprobs(torch.nn.Module):
    """Wraps a causal LM: forward(layout tensors, or a `Packed` batch) -> (n_seqs,) summed completion log-probs.
    The LM head runs only on the N completion positions. One module so DDP sees one forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, mask, src, labels, seq, n_seqs: int, save_kv: dict | None = None,
                packed=None):
        if packed is not None:
            h = packed_hidden_states(self.model, packed)  # (N, H)
        else:
            h = layout_hidden_states(self.model, input_ids, position_ids, mask, save_kv, needed=src)  # (N, H)
        return summed_logps(self.model, h, labels, seq, n_seqs)


def summed_logps(model: torch.nn.Module, h: torch.Tensor, labels: torch.Tensor, seq: torch.Tensor,
                 n_seqs: int) -> torch.Tensor:
    """(n_seqs,) sums of log p(labels[t]) from the hidden states h[t] (N, H) that predict them, by sequence seq[t]."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is None and type(head) is torch.nn.Linear:
        token_logps = linear_logprobs(h, head.weight, labels).float()  # (N,), with a memory-lean backward
    else:
        logits = head(h).float()  # (N, V)
        token_logps = logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (N,)
    return torch.zeros(n_seqs, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq, token_logps)


def run_layout(module: torch.nn.Module, lay: Layout, device, save_kv: dict | None = None) -> torch.Tensor:
    """(n_seqs,) summed completion log-probs of the layout `lay` through `module` (a `SequenceLogprobs`, or the
    Engine's DDP wrapper of one), its tensors moved to `device`. `save_kv`: see `layout_hidden_states`."""
    if lay.packed is not None:
        return module(None, None, None, None, to_device(lay.labels, device), to_device(lay.seq, device), lay.n_seqs,
                      packed=lay.packed.with_needed(lay.src).to(device))
    return module(lay.input_ids.to(device), lay.position_ids.to(device), lay.mask.to(device), lay.src.to(device),
                  lay.labels.to(device), lay.seq.to(device), lay.n_seqs, save_kv=save_kv)


def continuation_logps(model: torch.nn.Module, saved_kv: dict, lay: Layout, prompts: list[list[int]],
                       completions: list[list[int]]) -> torch.Tensor:
    """(n,) summed log-probs of completions[i] after prompts[i], where prompts[i] is item i of `lay`, a layout
    forward that saved its keys and values. Only each prompt's last token (its hidden state predicts the first
    completion token) and the completion but its last token are forwarded; the rest of the prompt is read back."""
    dev = next(model.parameters()).device
    runs, labels, seq = [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        start = int(lay.prompt_at[i])
        runs.append((torch.arange(start, start + len(p) - 1), [p[-1]] + c[:-1], len(p) - 1))
        labels += c
        seq += [i] * len(c)
    h = continuation_hidden_states(model, saved_kv, runs)
    return summed_logps(model, h, torch.tensor(labels, device=dev), torch.tensor(seq, device=dev), len(prompts))


def padded_logps(model: torch.nn.Module, items: list[tuple[list[int], list[list[int]]]], pad_id: int) -> torch.Tensor:
    """The plain path, for tests: every prompt + completion its own right-padded row, the usual 2-D mask."""
    n, k = len(items), len(items[0][1])
    seqs = [items[i][0] + items[i][1][j] for j in range(k) for i in range(n)]
    masks = [[False] * len(items[i][0]) + [True] * len(items[i][1][j]) for j in range(k) for i in range(n)]
    ids, att, loss_mask = data_lib.pad_right(seqs, pad_id, masks)
    return TokenLogprobs(model)(ids, att, loss_mask)["logprobs"].sum(-1)
