"""The built-in world: a synthetic assistant task whose ideal answers are computable.

Small enough to run the whole RLHF pipeline on 2 CPU cores in minutes, rich enough to show its phenomena:
an unaligned base model, SFT that helps, biased annotators whose bias a reward model learns, PPO that improves
gold at a moderate KL and pads its answers to hack the reward model at a small one.

Pure Python (no torch). Modules:
- `tasks`       prompt kinds, vocabulary, seeded generator, train / held-out split, prompt parser
- `styles`      response styles: `respond`, `ideal_response`, `analyse`, `classify_styles`
- `gold`        the gold judge (helpful / harmless / honest / concise / total), verifiable rewards
- `annotators`  simulated annotators, choice probabilities, labels, the reward-model accuracy ceiling
- `corpus`      `WorldConfig` and the datasets (pretraining, SFT, RL and held-out prompts)
- `export`      `rlhfkit world export`: write the datasets as JSONL
- `label`       `rlhfkit world label`: label a candidates file into TRL preference rows
"""
from rlhfkit.world.annotators import (
    Annotator, ceiling, decide, default_annotators, label_pair, outcome_probs, prob_prefers, strength, utility,
)
from rlhfkit.world.corpus import WorldConfig, heldout_prompts, pretrain_corpus, sft_demos, train_prompts
from rlhfkit.world.gold import COMPONENTS, GOLD_WEIGHTS, concise_penalty, correct_reward, gold, gold_reward, is_correct
from rlhfkit.world.styles import (
    APPLICABLE_STYLES, BAD_STYLES, CONFIDENT_MARKERS, FILLERS, REFUSALS, STYLES, analyse, classify_styles,
    ideal_response, respond, style_rates,
)
from rlhfkit.world.tasks import PROMPT_KINDS, SPLITS, make_prompts, parse_prompt, prompt_kind, split_of

__all__ = [
    "WorldConfig", "make_prompts", "PROMPT_KINDS", "SPLITS", "STYLES", "BAD_STYLES", "APPLICABLE_STYLES",
    "FILLERS", "CONFIDENT_MARKERS", "REFUSALS", "respond", "ideal_response", "analyse", "classify_styles",
    "style_rates", "pretrain_corpus", "sft_demos", "heldout_prompts", "train_prompts", "gold", "GOLD_WEIGHTS",
    "COMPONENTS", "concise_penalty", "classify_styles", "Annotator", "default_annotators", "utility",
    "outcome_probs", "prob_prefers", "label_pair", "decide", "strength", "ceiling", "gold_reward",
    "correct_reward", "is_correct", "parse_prompt", "prompt_kind", "split_of",
]
