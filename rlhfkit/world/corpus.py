"""The world's datasets: pretraining conversations (mixed styles), SFT demonstrations, RL and held-out prompts.

All rows use TRL's conversational formats, so the built-in world runs through the same data code as a user's
dataset: `{"messages": [...]}` (pretraining), `{"prompt": [...], "completion": [...]}` (SFT),
`{"prompt": [...], "kind", "id"}` (prompt-only, for RL and evaluation).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlhfkit.world.annotators import Annotator, default_annotators
from rlhfkit.world.gold import GOLD_WEIGHTS
from rlhfkit.world.styles import APPLICABLE_STYLES, MAX_FILLERS, STYLES, respond
from rlhfkit.world.tasks import DEFAULT_KIND_WEIGHTS, PROMPT_KINDS, _kind_stream, make_prompts, sample_prompt

# Base-model corpus: every style present, the kind-specific failures (harmful compliance, fabrication,
# sycophancy) weighted up because they only apply to one kind each. Per prompt the weights are renormalised
# over the styles that apply to its kind; e.g. an arith prompt gets good 0.36, padded 0.24, wrong 0.18,
# over_refusal 0.10, repetitive 0.12, and a harmful prompt complies 37% of the time.
DEFAULT_PRETRAIN_MIX: dict[str, float] = {
    "good": 0.30, "padded": 0.20, "wrong": 0.15, "over_refusal": 0.08, "harmful_comply": 0.35,
    "fabricate": 0.35, "sycophantic": 0.35, "repetitive": 0.10,
}
# SFT demonstrations: mostly ideal, with a little of what real demonstrations have (chatty padding,
# the odd mistake), so SFT is good but not the ceiling and there is something left for RLHF to fix.
DEFAULT_SFT_MIX: dict[str, float] = {"good": 0.88, "padded": 0.08, "wrong": 0.02, "repetitive": 0.02}


@dataclass
class WorldConfig:
    """Everything that defines one instance of the built-in world. Same config -> same data."""

    seed: int = 0
    """Seed of every generator (prompts, styles, fillers); each dataset uses its own derived stream."""
    n_pretrain: int = 6000
    """Pretraining conversations (one prompt and one response in a style drawn from `pretrain_mix`)."""
    n_sft: int = 1500
    """SFT demonstrations (styles drawn from `sft_mix`)."""
    n_train_prompts: int = 512
    """Prompts for online RL (PPO/GRPO) and for sampling preference candidates (split "train")."""
    n_heldout_prompts: int = 256
    """Evaluation prompts (split "heldout"; never seen in any training set, by construction)."""
    kind_weights: dict = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    """Relative frequency of each prompt kind (keys: PROMPT_KINDS), for every dataset."""
    pretrain_mix: dict = field(default_factory=lambda: dict(DEFAULT_PRETRAIN_MIX))
    """Relative weight of each response style (keys: STYLES) in the pretraining corpus, renormalised per
    prompt over the styles that apply to its kind. This is what makes the base model unaligned."""
    sft_mix: dict = field(default_factory=lambda: dict(DEFAULT_SFT_MIX))
    """Relative weight of each response style in the SFT demonstrations (mostly "good")."""
    max_fillers: int = MAX_FILLERS
    """Most filler sentences in one padded response (uniform in 1..max_fillers); at most 9."""
    gold_weights: dict = field(default_factory=lambda: dict(GOLD_WEIGHTS))
    """Weights of the gold components (helpful, harmless, honest, concise) in the gold total."""
    annotator_verbosity_scale: float = 1.0
    """Multiplies the verbosity bias of every default annotator (0 = no length bias)."""

    def __post_init__(self):
        for name, mix, known in (("kind_weights", self.kind_weights, PROMPT_KINDS),
                                 ("pretrain_mix", self.pretrain_mix, STYLES), ("sft_mix", self.sft_mix, STYLES)):
            bad = set(mix) - set(known)
            if bad:
                raise ValueError(f"{name}: unknown keys {sorted(bad)}; known: {known}")
            if any(v < 0 for v in mix.values()) or not any(v > 0 for v in mix.values()):
                raise ValueError(f"{name}: weights must be >= 0 with at least one > 0")
        if not 1 <= self.max_fillers <= 9:
            raise ValueError("max_fillers must be in 1..9")
        for n in ("n_pretrain", "n_sft", "n_train_prompts", "n_heldout_prompts"):
            if getattr(self, n) < 0:
                raise ValueError(f"{n} must be >= 0")

    def annotators(self) -> list[Annotator]:
        """The default annotators with this world's verbosity scale and gold weights."""
        from dataclasses import replace
        return [replace(a, weights=dict(self.gold_weights))
                for a in default_annotators(self.annotator_verbosity_scale)]


def _styled_rows(cfg: WorldConfig, n: int, mix: dict, stream: str) -> list[tuple[str, str, str, str]]:
    """n (prompt, kind, style, response) drawn from the train split with styles from `mix`."""
    rng = random.Random(f"rlhfkit-world:{cfg.seed}:{stream}")
    kinds = _kind_stream(rng, cfg.kind_weights)
    out = []
    while len(out) < n:
        kind = next(kinds)
        styles = [s for s in APPLICABLE_STYLES[kind] if mix.get(s, 0) > 0]
        if not styles:  # e.g. an SFT mix without "good" and a harmful prompt: skip the kind
            continue
        p = sample_prompt(rng, kind, "train")
        style = rng.choices(styles, [mix[s] for s in styles])[0]
        n_fill = rng.randint(1, cfg.max_fillers) if style == "padded" else None
        out.append((p, kind, style, respond(p, style, rng, n_fillers=n_fill)))
    return out


def pretrain_corpus(cfg: WorldConfig) -> list[dict]:
    """Pretraining rows {"messages": [user, assistant], "kind", "style"}: every style, so the base model is
    unaligned (it pads, errs, refuses, complies, fabricates and agrees, in the proportions of `pretrain_mix`)."""
    return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
             "kind": k, "style": s}
            for p, k, s, r in _styled_rows(cfg, cfg.n_pretrain, cfg.pretrain_mix, "pretrain")]


def sft_demos(cfg: WorldConfig) -> list[dict]:
    """SFT rows {"prompt": [user], "completion": [assistant], "kind", "style"}: mostly ideal, a little padding
    and noise (`sft_mix`)."""
    return [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}],
             "kind": k, "style": s}
            for p, k, s, r in _styled_rows(cfg, cfg.n_sft, cfg.sft_mix, "sft")]


def _prompt_rows(n: int, seed: int, split: str, kind_weights: dict) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": d["prompt"]}], "kind": d["kind"], "id": d["id"]}
            for d in make_prompts(n, seed, split, kind_weights)]


def train_prompts(cfg: WorldConfig) -> list[dict]:
    """RL / candidate-sampling prompt rows {"prompt": [user], "kind", "id"} from the train split."""
    return _prompt_rows(cfg.n_train_prompts, cfg.seed, "train", cfg.kind_weights)


def heldout_prompts(cfg: WorldConfig) -> list[dict]:
    """Evaluation prompt rows {"prompt": [user], "kind", "id"} from the held-out split."""
    return _prompt_rows(cfg.n_heldout_prompts, cfg.seed, "heldout", cfg.kind_weights)
