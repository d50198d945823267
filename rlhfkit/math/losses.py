"""Losses as pure tensor functions: NLL, Bradley-Terry reward modelling, the DPO family, PPO policy and value losses.

Every function takes tensors and hyperparameters and returns per-example values (plus detached metrics); the
training loop reduces. Shapes: B pairs / sequences, T tokens. Log-probs are float tensors; masks are bool.

Preference losses return `(losses, chosen_rewards, rejected_rewards)`, each (B,): `losses` carries the gradient,
the implicit rewards are detached and only for metrics (rewards/chosen, rewards/margin, rewards/accuracy).
Sequence log-probs are SUMS over completion tokens unless an argument is named `*_avg_logps` (sum / length).

Imports only torch (and the sibling pure module kl).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rlhfkit.math.kl import kl_k3

Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------- NLL
def nll_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over all masked tokens of the batch (SFT). (B, T), (B, T) -> scalar.
    0 for an all-False mask."""
    n = mask.sum().clamp(min=1)
    return -torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum() / n


# ------------------------------------------------------------------------------------------- reward modelling
def _bt_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    diff = (chosen_rewards - rejected_rewards).detach()
    return {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | float | None = None,
                       center_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry reward-model loss, per pair. (B,), (B,) -> (losses (B,), metrics).

    P(chosen > rejected) = sigmoid(r_c - r_r) (Bradley & Terry 1952; InstructGPT eq. 1), so
        loss = -log sigmoid(r_c - r_r - margin) + center_coef * (r_c + r_r)^2
    margin: optional (B,) or scalar; the pair must win by at least this much (Llama 2, sec. 3.2.2).
    center_coef: reward centering (Eisenstein et al. 2023, "Helping or Herding?"): pulls the mean reward of a pair to
    0 so the reward scale is identifiable; TRL's center_rewards_coefficient (mean over pairs of the same term).
    metrics: accuracy = mean(r_c > r_r), margin = mean(r_c - r_r) (the raw difference, not minus `margin`).
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses, _bt_metrics(chosen_rewards, rejected_rewards)


def bt_soft_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, target_prob: torch.Tensor | float,
                 center_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry with a soft target p = P(chosen preferred), e.g. 0.5 for ties:
        loss = -(p log sigmoid(d) + (1 - p) log sigmoid(-d)),   d = r_c - r_r
    i.e. the cross-entropy between Bernoulli(p) and Bernoulli(sigmoid(d)); p = 1 is plain BT, p = 0.5 is minimised at
    d = 0 (value log 2). target_prob: scalar or (B,). Returns (losses (B,), metrics) as bradley_terry_loss.
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    losses = -(target_prob * F.logsigmoid(diff) + (1 - target_prob) * F.logsigmoid(-diff))
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses, _bt_metrics(chosen_rewards, rejected_rewards)


# ---------------------------------------------------------------------------------------------- DPO family
def _rewards(beta: float, policy_logps: torch.Tensor, ref_logps: torch.Tensor | None) -> torch.Tensor:
    """Implicit reward beta * log pi/pi_ref (Rafailov et al. 2023, eq. 5), or beta * log pi without a reference."""
    return (beta * (policy_logps - ref_logps if ref_logps is not None else policy_logps)).detach()


def _logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l), (B,)."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_sigmoid(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
                label_smoothing: float = 0.0, length_alpha: float = 0.0,
                length_diff: torch.Tensor | None = None) -> Triple:
    """DPO (Rafailov et al. 2023, eq. 7): loss = -log sigmoid(beta * h).

    label_smoothing = eps > 0 is conservative DPO (cDPO, DPO paper's appendix / Mitchell 2023): with labels flipped
    with probability eps, loss = (1 - eps) * -log sigmoid(beta h) + eps * -log sigmoid(-beta h).
    (TRL 1.16's `sigmoid` silently ignores label_smoothing; we follow the paper.)

    length_alpha = alpha > 0 is R-DPO (Park et al. 2024, eq. 9), for labels biased towards longer answers: the
    RL objective gets a length penalty alpha |y|, so the implied reward is beta h + alpha (|y_w| - |y_l|) and the
    loss -log sigmoid(beta h + alpha (|y_w| - |y_l|)); `length_diff` = |y_w| - |y_l| in tokens, (B,). A preference
    that length alone explains then no longer pushes the policy towards longer answers.
    """
    logits = beta * _logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                     ref_rejected_logps)  # (B,)
    if length_alpha:
        if length_diff is None:
            raise ValueError("length_alpha (R-DPO) needs length_diff = chosen - rejected lengths")
        logits = logits + length_alpha * length_diff
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return (losses, _rewards(beta, policy_chosen_logps, ref_chosen_logps),
            _rewards(beta, policy_rejected_logps, ref_rejected_logps))


def ipo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor, beta: float) -> Triple:
    """IPO (Azar et al. 2023, eq. 17, tau = beta): loss = (h - 1/(2 beta))^2, a squared loss that regresses the
    log-ratio margin to a finite target instead of pushing it to infinity as DPO can on deterministic preferences.

    The paper's h uses sequence log-probs (sums); pass sums for the paper's IPO. TRL instead averages log-probs over
    completion tokens for IPO (checked against its recorded values); passing `*_logps / lengths` reproduces that.
    """
    h = _logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1 / (2 * beta)) ** 2
    return (losses, _rewards(beta, policy_chosen_logps, ref_chosen_logps),
            _rewards(beta, policy_rejected_logps, ref_rejected_logps))


def hinge(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
          ref_rejected_logps: torch.Tensor, beta: float) -> Triple:
    """Hinge loss of SLiC (Zhao et al. 2023) in the normalised form of RSO (Liu et al. 2024): relu(1 - beta * h)."""
    h = _logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = F.relu(1 - beta * h)
    return (losses, _rewards(beta, policy_chosen_logps, ref_chosen_logps),
            _rewards(beta, policy_rejected_logps, ref_rejected_logps))


def simpo(policy_chosen_avg_logps: torch.Tensor, policy_rejected_avg_logps: torch.Tensor, beta: float,
          gamma: float) -> Triple:
    """SimPO (Meng et al. 2024, eq. 6): loss = -log sigmoid(beta * (avg_w - avg_l) - gamma), no reference model.

    avg = sequence log-prob / completion length (the length normalisation is what removes DPO's length bias);
    gamma is the target reward margin. Rewards are beta * avg (eq. 4).
    """
    losses = -F.logsigmoid(beta * (policy_chosen_avg_logps - policy_rejected_avg_logps) - gamma)
    return (losses, _rewards(beta, policy_chosen_avg_logps, None), _rewards(beta, policy_rejected_avg_logps, None))


def orpo_odds_ratio(policy_chosen_avg_logps: torch.Tensor, policy_rejected_avg_logps: torch.Tensor,
                    lam: float) -> Triple:
    """The odds-ratio term of ORPO (Hong et al. 2024, eqs. 4-7), WITHOUT the NLL (see `preference_loss`, `sft`):

        odds(y) = P(y) / (1 - P(y)),  P(y) = exp(avg log-prob)      (length-normalised, eq. 4)
        loss    = -lam * log sigmoid(log odds(y_w) - log odds(y_l))
    log odds = a - log(1 - e^a) computed as a - log(-expm1(a)) (stable for a -> 0-). Rewards are lam * avg (as TRL).
    The full ORPO objective is NLL(chosen) + this term.
    """
    def log_odds(a):
        return a - torch.log(-torch.expm1(a))

    log_odds_ratio = log_odds(policy_chosen_avg_logps) - log_odds(policy_rejected_avg_logps)  # (B,)
    losses = -lam * F.logsigmoid(log_odds_ratio)
    return (losses, _rewards(lam, policy_chosen_avg_logps, None), _rewards(lam, policy_rejected_avg_logps, None))


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean log pi(y'|x) / pi_ref(y'|x)) (Ethayarajh et al. 2024, sec. 4.1),
    estimated on mismatched pairs (x, y') (each prompt with another example's completion). Detached: the paper does
    not backpropagate through z0. (N,), (N,) -> scalar. In distributed training, gather before the mean."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor, kl: torch.Tensor | float, beta: float, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> Triple:
    """KTO (Ethayarajh et al. 2024, eq. 8) on UNPAIRED data: `chosen` = desirable examples (N_D,), `rejected` =
    undesirable examples (N_U,); the two sets need not have the same size.

        r = log pi(y|x) / pi_ref(y|x),  z0 = kl (from kto_reference_point)
        desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))
    (the paper's lambda_y - v(x, y)). losses: (N_D + N_U,), desirable first; rewards beta * r per set.
    """
    kl = torch.as_tensor(kl, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device).detach()
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (N_D,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (N_U,)
    chosen_losses = desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - kl)))
    rejected_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected_logratios)))
    return (torch.cat([chosen_losses, rejected_losses]), _rewards(beta, policy_chosen_logps, ref_chosen_logps),
            _rewards(beta, policy_rejected_logps, ref_rejected_logps))


def sft(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-example token-mean NLL of the chosen response: -log pi(y_w) / |y_w|, (B,). The RPO / "DPO + SFT"
    regulariser and ORPO's L_SFT. (TRL's DPO `sft` instead takes one token mean over all chosen tokens of the batch;
    weight these losses by length / mean length to reproduce it.)"""
    return -policy_chosen_logps / chosen_lengths.clamp(min=1)


class LossType(str, Enum):
    """A preference-loss variant. The trainer asks the member what it needs instead of branching on names."""

    sigmoid = "sigmoid"
    ipo = "ipo"
    hinge = "hinge"
    simpo = "simpo"
    orpo = "orpo"
    kto = "kto"
    sft = "sft"

    @property
    def needs_reference(self) -> bool:
        """Needs reference-model log-probs (ref_chosen_logps / ref_rejected_logps)."""
        return self in (LossType.sigmoid, LossType.ipo, LossType.hinge, LossType.kto)

    @property
    def length_normalised(self) -> bool:
        """Compares per-token AVERAGE log-probs (sum / length) rather than sequence sums: needs the lengths."""
        return self in (LossType.simpo, LossType.orpo)

    @property
    def needs_nll(self) -> bool:
        """Contains an NLL term on the chosen response (computed by preference_loss from the chosen sums and
        lengths; the trainer adds nothing)."""
        return self in (LossType.orpo, LossType.sft)

    @property
    def unpaired(self) -> bool:
        """Trains on unpaired desirable / undesirable examples (chosen and rejected sets of any sizes)."""
        return self is LossType.kto


@dataclass(frozen=True)
class _PreferenceBatch:
    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor | None
    ref_rejected_logps: torch.Tensor | None
    chosen_lengths: torch.Tensor | None
    rejected_lengths: torch.Tensor | None
    beta: float
    label_smoothing: float
    length_alpha: float
    gamma: float
    kto_kl: torch.Tensor | float | None
    desirable_weight: float
    undesirable_weight: float

    @property
    def chosen_avg(self) -> torch.Tensor:
        return self.policy_chosen_logps / self.chosen_lengths.clamp(min=1)

    @property
    def rejected_avg(self) -> torch.Tensor:
        return self.policy_rejected_logps / self.rejected_lengths.clamp(min=1)

    @property
    def length_diff(self) -> torch.Tensor | None:
        """|y_w| - |y_l| in tokens (R-DPO), when the lengths were given."""
        return None if self.chosen_lengths is None else self.chosen_lengths - self.rejected_lengths

    @property
    def ref_args(self) -> tuple:
        return (self.policy_chosen_logps, self.policy_rejected_logps, self.ref_chosen_logps, self.ref_rejected_logps)


def _orpo_full(p: _PreferenceBatch) -> Triple:
    # ORPO eq. 6: L = L_SFT + lambda * L_OR, lambda = beta.
    losses, cr, rr = orpo_odds_ratio(p.chosen_avg, p.rejected_avg, p.beta)
    return losses + sft(p.policy_chosen_logps, p.chosen_lengths), cr, rr


def _sft_only(p: _PreferenceBatch) -> Triple:
    return (sft(p.policy_chosen_logps, p.chosen_lengths), _rewards(p.beta, p.policy_chosen_logps, p.ref_chosen_logps),
            _rewards(p.beta, p.policy_rejected_logps, p.ref_rejected_logps))


def _kto(p: _PreferenceBatch) -> Triple:
    if p.kto_kl is None:
        raise ValueError("kto needs kto_kl (the reference point z0, see kto_reference_point; 0.0 to disable)")
    return kto(*p.ref_args, p.kto_kl, p.beta, p.desirable_weight, p.undesirable_weight)


_LOSS_FNS: dict[LossType, Callable[[_PreferenceBatch], Triple]] = {
    LossType.sigmoid: lambda p: dpo_sigmoid(*p.ref_args, p.beta, p.label_smoothing, p.length_alpha, p.length_diff),
    LossType.ipo: lambda p: ipo(*p.ref_args, p.beta),
    LossType.hinge: lambda p: hinge(*p.ref_args, p.beta),
    LossType.simpo: lambda p: simpo(p.chosen_avg, p.rejected_avg, p.beta, p.gamma),
    LossType.orpo: _orpo_full,
    LossType.kto: _kto,
    LossType.sft: _sft_only,
}


def preference_loss(loss_type: LossType | str | Sequence[LossType | str], *, policy_chosen_logps: torch.Tensor,
                    policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor | None = None,
                    ref_rejected_logps: torch.Tensor | None = None, chosen_lengths: torch.Tensor | None = None,
                    rejected_lengths: torch.Tensor | None = None, beta: float, label_smoothing: float = 0.0,
                    length_alpha: float = 0.0, gamma: float = 0.5, kto_kl: torch.Tensor | float | None = None,
                    desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                    loss_weights: Sequence[float] | None = None) -> Triple:
    """One entry point for the DPO family. Log-probs are sequence SUMS over completion tokens, (B,) each;
    lengths (B,) are completion token counts (needed by length-normalised variants and NLL terms).

    loss_type: one type, or a list combined as sum_i loss_weights[i] * losses_i (e.g. [sigmoid, sft] with
    [1.0, 0.2] = DPO + RPO-style NLL); the rewards returned are those of the first type. For orpo, beta is ORPO's
    lambda and the NLL is included (full ORPO loss). For kto, chosen/rejected are the desirable/undesirable sets and
    kto_kl is z0. length_alpha > 0 adds R-DPO's length term to sigmoid (needs both lengths).
    Returns (losses, chosen_rewards, rejected_rewards).
    """
    types = [loss_type] if isinstance(loss_type, (str, LossType)) else list(loss_type)
    types = [LossType(t) for t in types]
    if not types:
        raise ValueError("no loss type given")
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"{len(types)} loss types but {len(weights)} loss weights")
    if any(t.unpaired for t in types) and len(types) > 1:
        raise ValueError("kto (unpaired) cannot be combined with other loss types")
    if any(t.needs_reference for t in types) and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"{[t.value for t in types if t.needs_reference]} need reference log-probs")
    if any(t.length_normalised for t in types) and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"{[t.value for t in types if t.length_normalised]} need chosen and rejected lengths")
    if length_alpha and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError("length_alpha (R-DPO) needs chosen and rejected lengths")
    if any(t.needs_nll for t in types) and chosen_lengths is None:
        raise ValueError(f"{[t.value for t in types if t.needs_nll]} need chosen lengths")
    batch = _PreferenceBatch(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             chosen_lengths, rejected_lengths, beta, label_smoothing, length_alpha, gamma, kto_kl,
                             desirable_weight, undesirable_weight)
    total, rewards = None, None
    for t, w in zip(types, weights):
        losses, cr, rr = _LOSS_FNS[t](batch)
        total = w * losses if total is None else total + w * losses
        if rewards is None:
            rewards = (cr, rr)
    return total, rewards[0], rewards[1]


# ------------------------------------------------------------------------------------------------------ PPO
def _token_mean(x, mask):
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


def _seq_mean(x, mask):
    per_seq = torch.where(mask, x, torch.zeros_like(x)).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
    return per_seq.mean()


def _seq_mean_token_sum(x, mask):
    return torch.where(mask, x, torch.zeros_like(x)).sum(-1).mean()


# How per-token losses (B, T) become a scalar; this choice sets the length incentive (PITFALLS #12):
#   token_mean          every token in the batch weighs the same (DAPO; PPO in most RLHF code)
#   seq_mean            mean over sequences of each sequence's token mean (original GRPO): long sequences'
#                       tokens weigh less, so long bad answers are penalised less per token
#   seq_mean_token_sum  mean over sequences of token sums (Dr. GRPO without its constant normaliser)
AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token_mean": _token_mean, "seq_mean": _seq_mean, "seq_mean_token_sum": _seq_mean_token_sum}


def aggregate(x: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean") -> torch.Tensor:
    """Reduce per-token values (B, T) over the mask to a scalar, see AGGREGATIONS."""
    try:
        fn = AGGREGATIONS[aggregation]
    except KeyError:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {sorted(AGGREGATIONS)}") from None
    return fn(x, mask)


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = (1/|y_i|) sum_t (log pi(y_t) - log pi_old(y_t)), the length-normalised sequence log-ratio of GSPO
    (Zheng et al. 2025, the s_i(theta) of eq. 5: s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|)). (B, T) -> (B, 1);
    0 for an empty row."""
    per_token = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, T)
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1))[:, None]  # (B, 1)


# The importance ratio the clipped surrogate is formed with:
#   token     r_t = pi(y_t) / pi_old(y_t) per token (PPO, GRPO, DAPO)
#   sequence  s_i of GSPO, in its GSPO-token form (Zheng et al. 2025, sec. 4.3):
#             s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]. Its value is s_i at every token; with one advantage per
#             sequence its gradient is that of eq. 5 once the tokens of a sequence are averaged (seq_mean), and it
#             also accepts per-token advantages. Clipping then acts on s_i: a whole sequence is clipped or not.
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_range: float = 0.2, aggregation: str = "token_mean",
                    clip_range_high: float | None = None,
                    importance_sampling_level: str = "token") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise:

        ratio = pi(a|s) / pi_old(a|s) = exp(logprobs - old_logprobs)
        loss_t = max(-A_t * ratio, -A_t * clip(ratio, 1 - eps_low, 1 + eps_high))

    logprobs, old_logprobs, mask: (B, T); advantages: (B, T), or (B,) for sequence-level advantages (GRPO/RLOO),
    broadcast over tokens. clip_range is eps_low; clip_range_high = eps_high defaults to it. DAPO's clip-higher
    (Yu et al. 2025, sec. 3.1 and eq. 8) sets eps_high > eps_low, so low-probability tokens with A > 0 can grow;
    with aggregation token_mean this is DAPO's token-level loss (sec. 3.3).
    importance_sampling_level: "token" (above) or "sequence" (GSPO, Zheng et al. 2025, eq. 5: the ratio is s_i,
    see sequence_log_ratio; with seq_mean aggregation and sequence advantages it is the paper's objective; the
    paper's clip ranges are 3e-4 / 4e-4, sec. 5.1). With one token per sequence both levels are the same loss.
    stats (detached scalars): clipfrac = fraction of tokens where the clipped branch is active (its gradient is 0),
    approx_kl = k3 estimate of KL(pi_old || pi) = mean((r - 1) - log r) on the per-token ratios, ratio = mean ratio
    (of the level used).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1) -> broadcast over T
    high = clip_range if clip_range_high is None else clip_range_high
    token_log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))  # padding: ratio 1
    if importance_sampling_level == "token":
        log_ratio = token_log_ratio
    elif importance_sampling_level == "sequence":
        log_ratio = sequence_log_ratio(logprobs, old_logprobs, mask).detach() + logprobs - logprobs.detach()
        log_ratio = torch.where(mask, log_ratio, torch.zeros_like(log_ratio))  # (B, T)
    else:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; "
                         f"choose from {IMPORTANCE_SAMPLING_LEVELS}")
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, aggregation)
    with torch.no_grad():
        stats = {"clipfrac": _token_mean((clipped > unclipped).to(ratio.dtype), mask),
                 "approx_kl": _token_mean(kl_k3(old_logprobs, logprobs), mask),
                 "ratio": _token_mean(ratio, mask)}
    return loss, stats


def cispo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip_range_high: float = 0.28, aggregation: str = "token_mean",
                      clip_range_low: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy gradient with truncated, stop-gradient importance weights (CISPO, MiniMax-M1, MiniMax 2025, sec. 3.1):

        w_t    = sg(clip(r_t, 1 - eps_low, 1 + eps_high)),  r_t = pi(y_t) / pi_old(y_t)
        loss_t = -w_t * A_t * log pi(y_t)

    Unlike the clipped surrogate no token loses its gradient: a token outside the range keeps the gradient
    -w_t A_t grad log pi with its weight truncated (the truncated importance weights min(rho_bar, pi / mu) of
    IMPALA's V-trace, Espeholt et al. 2018, sec. 4). The paper sets no lower bound: clip_range_low=None (weights in
    [0, 1 + eps_high]). At r = 1 the gradient equals the clipped surrogate's, -A grad log pi. The loss VALUE is
    -w A log pi, not comparable with ppo_policy_loss; only its gradient is the objective's.
    Shapes as ppo_policy_loss. stats: clipfrac = fraction of tokens whose weight was truncated, approx_kl, ratio
    (mean r), is_weight (mean w).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio).detach()  # (B, T)
    low = 0.0 if clip_range_low is None else 1 - clip_range_low
    weight = torch.clamp(ratio, low, 1 + clip_range_high)
    per_token = -weight * advantages * torch.where(mask, logprobs, torch.zeros_like(logprobs))
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        stats = {"clipfrac": _token_mean((weight != ratio).to(ratio.dtype), mask),
                 "approx_kl": _token_mean(kl_k3(old_logprobs, logprobs), mask),
                 "ratio": _token_mean(ratio, mask), "is_weight": _token_mean(weight, mask)}
    return loss, stats


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float,
                  aggregation: str = "token_mean") -> torch.Tensor:
    """-coef * H aggregated like the policy loss: added to the loss, it rewards a flatter next-token distribution
    (the entropy bonus of Mnih et al. 2016, sec. 4; Schulman et al. 2017, eq. 9). entropy: (B, T) per-token
    entropies of the policy (differentiable), mask (B, T) -> scalar; 0 when coef is 0."""
    return -coef * aggregate(entropy, mask, aggregation)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float | None = 0.2,
               aggregation: str = "token_mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines' PPO2 and lm-human-preferences; PITFALLS #9):

        v_clipped = old_values + clip(values - old_values, -c, c)
        loss_t    = 0.5 * max((values - returns)^2, (v_clipped - returns)^2)

    (B, T) each -> (loss scalar, {"vf_clipfrac": fraction of tokens where the clipped error is the larger}).
    clip_range_value=None: plain 0.5 * squared error.
    """
    err = (values - returns) ** 2
    if clip_range_value is None:
        per_token, clip_active = err, torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        err_clipped = (v_clipped - returns) ** 2
        per_token, clip_active = torch.maximum(err, err_clipped), err_clipped > err
    loss = 0.5 * aggregate(per_token, mask, aggregation)
    return loss, {"vf_clipfrac": _token_mean(clip_active.to(per_token.dtype), mask).detach()}
