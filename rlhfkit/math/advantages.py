"""Advantages and per-token rewards for on-policy RL on language models. Pure torch.

Shapes: B sequences, T response positions. Masks are bool, True = a real response token. Response masks are one
contiguous run of True per row (right padding, optionally with leading False for prompt positions); everything
outside the run is treated as "after the episode": rewards and values there count as 0 and the returned
advantages/returns are 0.
"""
from __future__ import annotations

import torch

from rlhfkit.math.kl import kl_estimate
from rlhfkit.math.logprobs import masked_var, masked_whiten


def gae_loop(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
             lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference GAE (Schulman et al. 2016, eq. 16), one sequence and one step at a time. Slow; for tests.

    For each row, on its real tokens t = 0..n-1 only:
        delta_t = r_t + gamma * V_{t+1} - V_t        (V_n = 0: the episode ends after the last real token)
        A_t     = delta_t + gamma * lam * A_{t+1}     (A_n = 0)
        R_t     = A_t + V_t                           (the value target)
    rewards, values: (B, T); mask: (B, T) bool -> (advantages, returns), each (B, T), 0 outside the mask.
    """
    adv = torch.zeros_like(rewards)
    for b in range(rewards.size(0)):
        idx = mask[b].nonzero().flatten().tolist()  # positions of the real tokens, in order
        next_value, next_adv = 0.0, 0.0
        for t in reversed(idx):
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            next_adv = delta + gamma * lam * next_adv
            adv[b, t] = next_adv
            next_value = float(values[b, t])
    returns = torch.where(mask, adv + values, torch.zeros_like(values))
    return adv, returns


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, vectorised over the batch: same result as `gae_loop`.

    rewards, values: (B, T); mask: (B, T) bool -> (advantages, returns), (B, T) each, 0 outside the mask.
    Zeroing rewards and values outside the mask makes every padded position after the last real token a state of
    value 0 with reward 0, so the backward recursion starts from A = 0, V = 0 at the end of each real run (one
    reverse scan over T, O(T) small ops; T is a few hundred to a few thousand).
    """
    zeros = torch.zeros_like(rewards)
    r = torch.where(mask, rewards, zeros)  # (B, T)
    v = torch.where(mask, values, zeros)  # (B, T)
    next_v = torch.cat([v[:, 1:], zeros[:, :1]], dim=1)  # (B, T): V_{t+1}, 0 past the end
    delta = r + gamma * next_v - v  # (B, T)
    adv = torch.zeros_like(delta)
    running = zeros[:, 0]  # (B,)
    for t in range(rewards.size(1) - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running
        adv[:, t] = running
    adv = torch.where(mask, adv, zeros)  # leading masked positions (prompt) would otherwise leak delta = gamma*V
    returns = torch.where(mask, adv + v, zeros)
    return adv, returns


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """Batch whitening of advantages (PITFALLS #8): mean 0, std 1 over the masked positions (all, if mask is None).
    shift_mean=False only rescales (for rewards)."""
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over the mask: 1 = perfect critic, 0 = no better than a constant,
    < 0 = worse (a diagnostic to log, PITFALLS #9). Scalar tensor; NaN-free (0 when Var[returns] is 0)."""
    var_y = masked_var(returns, mask)
    ev = 1 - masked_var(returns - values, mask) / var_y.clamp(min=torch.finfo(var_y.dtype).tiny)
    return torch.where(var_y > 0, ev, torch.zeros_like(ev))


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) -> (N / G, G). Layout: the G completions of one prompt are contiguous (prompt-major, as produced by
    repeat_interleave of the prompts)."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.view(-1, group_size)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024, "outcome supervision"): A_i = (r_i - mean_g) / (std_g + eps).

    rewards: (N,) with N = n_prompts * group_size -> (N,), one advantage per completion (the loss broadcasts it over
    the completion's tokens). std is the Bessel-corrected std within the group (as TRL); eps keeps a group of equal
    rewards at exactly 0 instead of 0/0. scale_by_std=False is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
    Training"): dividing by the std up-weights near-uniform (too easy / too hard) groups, so they only centre.
    """
    g = _groups(rewards, group_size)  # (P, G)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards, groups contiguous -> (N / G,) bool: True where the group's rewards are not all equal.

    A group of equal rewards has zero group-relative advantage for every member, so it adds no gradient, only
    noise to the batch size. DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2, the constraint of eq. 8:
    0 < |{o_i correct}| < G) keeps only the True groups and samples more prompts to refill the batch."""
    g = _groups(rewards, group_size)  # (P, G)
    return g.amax(dim=1) > g.amin(dim=1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j.

    rewards: (N,) grouped as in grpo_advantages -> (N,). Equivalently A_i = G / (G - 1) * (r_i - mean_g).
    The baseline excludes the sample itself, so it stays unbiased.
    """
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (the baseline leaves one out)")
    g = _groups(rewards, group_size)  # (P, G)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)  # (P, G)
    return (g - baseline).reshape(-1)


def last_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) bool, True only at the last True of each row (all False for an empty row)."""
    counts = mask.long().cumsum(dim=1)  # (B, T)
    return mask & (counts == counts[:, -1:])


def kl_penalised_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float, estimator: str = "k1",
                         no_eos_penalty: float | None = None,
                         has_eos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO reward (Ziegler et al. 2019, eq. 2; PITFALLS #2, #5):

        reward_t = -beta * KL_t                    on every response token t
                 + score                           added at the LAST real response token only

    score: (B,) reward-model scores; logprobs, ref_logprobs: (B, T) of the sampled response tokens (policy at
    rollout time, reference); mask: (B, T) bool response mask; estimator: "k1" (default: its sum over tokens is the
    sequence log-ratio, the KL of the paper), "k2" or "k3".
    no_eos_penalty: if given, subtracted from the score of rows whose `has_eos` (B,) bool is False (responses cut
    off at the length limit, PITFALLS #5).
    Returns (rewards (B, T), kl (B, T)), both 0 outside the mask; a row with an empty mask gets no score.
    """
    kl = torch.where(mask, kl_estimate(logprobs, ref_logprobs, estimator), torch.zeros_like(logprobs))  # (B, T)
    if no_eos_penalty is not None:
        if has_eos is None:
            raise ValueError("no_eos_penalty needs has_eos")
        score = torch.where(has_eos, score, score - no_eos_penalty)
    last = last_token_mask(mask)  # (B, T)
    rewards = -beta * kl + torch.where(last, score[:, None].to(kl.dtype), torch.zeros_like(kl))
    return rewards, kl



def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, sec. 3.4, eq. 13), added to the task reward:

        R_length(y) = 0                                   |y| <= L_max - L_cache
                    = ((L_max - L_cache) - |y|) / L_cache   L_max - L_cache < |y| <= L_max
                    = -1                                  |y| > L_max
    times `factor`. lengths: (B,) response lengths in tokens; max_length = L_max (max_new_tokens); buffer = L_cache
    (the window before L_max over which the penalty grows linearly from 0 to -factor). Returns (B,) float <= 0.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    over = (lengths.float() - (max_length - buffer)).clamp(min=0) / buffer  # 0 .. 1 inside the window
    return -factor * torch.where(lengths > max_length, torch.ones_like(over), over.clamp(max=1))


def reinforce_pp_advantages(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                            mask: torch.Tensor, beta: float, group_size: int | None = None,
                            gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    sec. 3): no critic; the KL to the reference is a per-token reward and the advantage is the return normalised
    over the whole batch:

        r_t   = I(t = last) * score - beta * KL_t,   KL_t = log pi_old(y_t) - log pi_ref(y_t)   (k1, token-level KL)
        G_t   = sum_{s >= t} gamma^(s - t) r_s                                                   (return)
        A_t   = (G_t - mean(G)) / std(G)     mean and std over every response token of the batch  (global norm.)

    group_size: subtract each group's mean score first (REINFORCE++-baseline, same paper, for G samples per prompt;
    groups contiguous); None: the plain estimator (one sample per prompt is fine).
    scores: (B,); logprobs (rollout-time policy), ref_logprobs, mask: (B, T). Returns (advantages (B, T), kl (B, T)),
    0 outside the mask.
    """
    if group_size is not None:
        g = _groups(scores, group_size)
        scores = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta, "k1")
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)  # V = 0, lambda = 1: the return G_t
    return whiten(returns, mask), kl
