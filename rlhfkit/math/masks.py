"""Pure tensor math on token masks: which tokens of a multi-turn episode the policy produced.

A tool-use episode is a sequence of segments: the prompt, then the policy's turns interleaved with context the
policy did not choose (tool results and the chat template's text around them). Only the policy's tokens are
actions: the loss, the importance ratio and the KL count them and nothing else. Tool-result tokens are observations;
training on them would teach the model to predict the tool's output instead of calling the tool, and their "KL"
would penalise text the policy never sampled (the loss masking of ReTool, Feng et al. 2025, and Search-R1, Jin et
al. 2025; TRL and verl mask tool responses the same way).

Imports only torch.
"""
from __future__ import annotations

import torch


def segment_mask(lengths: torch.Tensor, is_policy: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """(B, T) bool, True exactly on the tokens of the policy's segments.

    lengths: (B, S) int, the length of each segment of each row, in order (zero-length segments pad rows with
    fewer segments); is_policy: (B, S) bool; total: T, at least the longest row (default: exactly that). Positions
    past a row's last segment (right padding) are False.

    Worked example (the test checks it): one row with segments prompt 3, policy 2, tool 2, policy 3 and one with
    prompt 2, policy 1 (then two empty segments):

        lengths   = [[3, 2, 2, 3], [2, 1, 0, 0]]
        is_policy = [[F, T, F, T], [F, T, F, F]]
        ends      = cumsum = [[3, 5, 7, 10], [2, 3, 3, 3]]
        position t lies in the first segment whose end is > t (searchsorted, right=True):
          row 0: t = 0..9 -> segments 0 0 0 1 1 2 2 3 3 3 -> mask 0 0 0 1 1 0 0 1 1 1
          row 1: t = 0..2 -> segments 0 0 1, t >= 3 is past the row   -> mask 0 0 1 0 0 0 0 0 0 0

    For the log-prob convention (DESIGN.md: log-probs (B, T-1) aligned with input_ids[:, 1:]) slice it as
    `mask[:, 1:]`: the log-prob at t predicts token t+1, which counts if token t+1 is the policy's.
    """
    if lengths.dim() != 2 or lengths.shape != is_policy.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} and is_policy {tuple(is_policy.shape)} must both be (B, S)")
    if (lengths < 0).any():
        raise ValueError("segment lengths must be >= 0")
    ends = lengths.long().cumsum(-1)  # (B, S)
    longest = int(ends[:, -1].max()) if ends.numel() else 0
    T = longest if total is None else total
    if T < longest:
        raise ValueError(f"total {T} is shorter than the longest row ({longest} tokens)")
    B, S = lengths.shape
    pos = torch.arange(T, device=lengths.device).expand(B, T).contiguous()  # (B, T)
    seg = torch.searchsorted(ends, pos, right=True)  # (B, T) index of the segment holding each position
    inside = seg < S  # False past the row's end
    return is_policy.bool().gather(1, seg.clamp(max=max(S - 1, 0))) & inside if S else inside


def compact(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align the masked entries of each row: (B, T) -> ((B, N), (B, N) bool), N the most True in any row.

    For recursions over the policy's own steps (GAE): in a multi-turn episode the policy's tokens are separated by
    tool results, and a recursion run over the padded (B, T) layout would treat each gap as the end of the episode.
    Worked example (tested): x = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], mask = [[F, T, F, T, T], [T, F, F, F, F]]
    -> values [[2, 4, 5], [6, 0, 0]], mask [[T, T, T], [T, F, F]]. `expand` puts them back."""
    counts = mask.sum(1)  # (B,)
    N = int(counts.max()) if mask.numel() else 0
    col = mask.long().cumsum(1) - 1  # (B, T): the column each masked entry moves to
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    out = x.new_zeros(mask.shape[0], N)
    out[rows[mask], col[mask]] = x[mask]
    return out, torch.arange(N, device=mask.device)[None] < counts[:, None]


def expand(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inverse of `compact`: (B, N) left-aligned values back to their (B, T) positions under `mask`, 0 elsewhere."""
    col = mask.long().cumsum(1) - 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    out = y.new_zeros(mask.shape)
    out[mask] = y[rows[mask], col[mask]]
    return out
