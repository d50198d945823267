"""`rlhfkit reinforce-pp`: REINFORCE++ (Hu 2025), critic-free policy gradient with a token-level KL reward.

REINFORCE++ ("REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models", sec. 3) keeps PPO's
per-token KL-shaped reward and clipped update but drops the critic: the advantage of token t is the return from t,
normalised over every response token of the batch (global normalisation, instead of GRPO's per-prompt one):

    r_t = I(t = last) * score - beta * (log pi_old(y_t) - log pi_ref(y_t)),   G_t = sum_{s >= t} gamma^(s-t) r_s,
    A_t = (G_t - mean(G)) / std(G)

(advantages.reinforce_pp_advantages). With group_baseline (the default, REINFORCE++-baseline of the same paper)
each prompt's num_generations scores are first centred on their mean; without it one sample per prompt works.
Everything else (batching, clipping, GSPO / CISPO / DAPO flags, entropy) is the GRPO loop of grpo.py.

    from rlhfkit import reinforce_pp
    reinforce_pp.train(reinforce_pp.Config(model="runs/sft", data="prompts.jsonl",
                                           reward_model=["rlhfkit.world:correct_reward"]))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhfkit.algorithms import grpo


@dataclass
class Config(grpo.Config):
    beta: float = 0.04
    """Weight of the per-token k1 KL penalty in the REWARD (REINFORCE++'s token-level KL; no KL loss term);
    0: no reference model is loaded."""
    group_baseline: bool = True
    """Subtract each prompt's mean score before the global normalisation (REINFORCE++-baseline); false: plain
    REINFORCE++, and num_generations may be 1."""
    gamma: float = 1.0
    """Discount of the return G_t (1: the undiscounted sum of the remaining rewards)."""

    def min_generations(self) -> int:
        return 2 if self.group_baseline else 1

    def validate(self) -> None:
        super().validate()
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


def train(cfg: Config, reward_fn: Callable | None = None) -> Path:
    """REINFORCE++ with the GRPO loop; `reward_fn` (Python API) overrides cfg.reward_model."""
    return grpo._train(cfg, "reinforce_pp", reward_fn)
