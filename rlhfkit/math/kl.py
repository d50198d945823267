"""KL estimators and KL-coefficient controllers. Pure torch.

Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi (J. Schulman, "Approximating KL Divergence",
2020). With log r = ref_logprobs - logprobs = log pi_ref(x)/pi(x) at a sampled x ~ pi:
    k1 = -log r                  unbiased, high variance, can be negative per token (and on a finite sample mean)
    k2 = (log r)^2 / 2           biased (low for close distributions), always >= 0
    k3 = (r - 1) - log r         unbiased, lower variance, always >= 0 (since log r <= r - 1)
PITFALLS #3: k1 goes inside the PPO reward (its sum over a sequence is the sequence log-ratio); k3 as a loss term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(x) - log pi_ref(x), elementwise (any shape, typically (B, T))."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi(x) - log pi_ref(x))^2 / 2, elementwise."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with log r = log pi_ref(x) - log pi(x), elementwise; >= 0.

    expm1 keeps it exact near r = 1 (r - 1 - log r is O(log r ^ 2), which exp(.) - 1 would round away)."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL with the named estimator ("k1", "k2" or "k3")."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {sorted(KL_ESTIMATORS)}") from None
    return fn(logprobs, ref_logprobs)


@dataclass
class FixedKLController:
    """A constant KL coefficient beta. Same interface as AdaptiveKLController."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards `target` (Ziegler et al. 2019, sec. 2.2):

        e_t = clip(KL_t / target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + e_t * n_steps / horizon)

    `n_steps` is the number of samples (episodes) the KL was measured on; `horizon` is in the same unit (the
    reference implementation used 10_000). The clip bounds the change per update (PITFALLS #4).
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))
