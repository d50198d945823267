"""Pure tensor math on logits and per-token log-probs: token log-probs, masked reductions, whitening, entropy.

Conventions (docs/DESIGN.md):
  * For `input_ids (B, T)` the caller passes `logits[:, :-1]` and `labels = input_ids[:, 1:]`, so `logps[b, t]` is
    log p(labels[b, t] | tokens <= t), aligned with the label token. Masks are sliced the same way.
  * Masks are bool, True = the position counts. A reduction over an all-False mask returns 0, never NaN.

Imports only torch. The fused LM head + log-softmax with the compiled loops (`linear_logprobs`) is in
`models.logps`; `token_logprobs` here is its reference.
"""
from __future__ import annotations

import torch

# Rows of (B*T, V) logits processed at once. Bounds the float32 temporaries (the tempered copy, exp(x - max)) at
# CHUNK_ROWS * V floats instead of B * T * V: with V = 150k that is ~600 MB per 1024 rows instead of gigabytes.
CHUNK_ROWS = 1024


def _row_chunks(logits: torch.Tensor, chunk_rows: int):
    """Yield (start, stop, chunk) over the flattened rows of a (..., V) tensor, each chunk (n, V)."""
    flat = logits.reshape(-1, logits.size(-1))  # (N, V), a view for contiguous input
    for start in range(0, flat.size(0), chunk_rows):
        yield start, min(start + chunk_rows, flat.size(0)), flat[start:start + chunk_rows]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # log-softmax in bf16/fp16 loses ~3 significant digits, enough to make the PPO ratio != 1 at step 0;
    # compute in at least float32 (float64 inputs stay float64).
    return torch.promote_types(dtype, torch.float32)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Log-probability of each label token: log softmax(logits / temperature)[label].

    logits: (B, T, V), labels: (B, T) int -> (B, T) in float32 (or float64 for float64 logits).

    The logits are divided by the sampling temperature BEFORE the softmax (PITFALLS #7): the sampler drew tokens from
    softmax(z / tau), so the log-probs used for the PPO ratio and the KL must be of that same distribution, otherwise
    the ratio is not 1 at step 0.

    Memory: computed as z[label] - logsumexp(z) chunk by chunk over rows, so no full (B, T, V) log_softmax copy (nor a
    full tempered copy) is ever materialised; only (chunk_rows, V) temporaries. Labels < 0 (e.g. -100 padding) get
    log-prob 0, so their KL and ratio terms vanish (PITFALLS #6) even if the caller forgets to mask.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    dtype = compute_dtype(logits.dtype)
    flat_labels = labels.reshape(-1)  # (N,)
    valid = flat_labels >= 0
    safe_labels = flat_labels.clamp(min=0)
    out = []
    for start, stop, chunk in _row_chunks(logits, chunk_rows):
        z = chunk.to(dtype)
        if temperature != 1.0:
            z = z / temperature  # (n, V)
        picked = z.gather(-1, safe_labels[start:stop, None]).squeeze(-1)  # (n,)
        out.append(picked - torch.logsumexp(z, dim=-1))  # (n,)
    logps = torch.cat(out) if out else logits.new_zeros(0, dtype=dtype)
    return torch.where(valid, logps, torch.zeros_like(logps)).view(labels.shape)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0,
                        chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position: (B, T, V) -> (B, T).

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v with z = logits / tau (same chunking as token_logprobs).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = compute_dtype(logits.dtype)
    out = []
    for _, _, chunk in _row_chunks(logits, chunk_rows):
        z = chunk.to(dtype)
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)  # (n,)
        p = torch.softmax(z, dim=-1)  # (n, V)
        out.append(lse - (p * z).sum(-1))
    ent = torch.cat(out) if out else logits.new_zeros(0, dtype=dtype)
    return ent.view(logits.shape[:-1])


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is True (over everything, or along `dim`). Uses where(), so NaN/inf in padding is ignored."""
    x = torch.where(mask, x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is True; 0 where the mask is empty (no NaN from 0/0)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all masked positions (scalar). Bessel-corrected by default (n - 1 denominator);
    0 when fewer than two positions count."""
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    n = mask.sum().to(x.dtype)
    denom = (n - 1) if unbiased else n
    return torch.where(denom > 0, sq / denom.clamp(min=1), torch.zeros_like(sq))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; positions outside the mask are set to 0.

    shift_mean=False keeps the mean and only rescales (used for rewards: whitening must not change their sign
    structure; "The N Implementation Details of RLHF with PPO", Huang et al., detail on reward whitening, PITFALLS #8).
    Statistics are batch-level (whole tensor), with the Bessel-corrected variance.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def sequence_logprobs(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence log-prob: (B, T) token log-probs -> (B,) sum over masked tokens, or their mean if `average`
    (the length-normalised log-prob of SimPO / ORPO). An empty row gives 0."""
    return masked_mean(token_logps, mask, dim=-1) if average else masked_sum(token_logps, mask, dim=-1)
