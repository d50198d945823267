"""`rlhfkit sft`: supervised fine-tuning on demonstrations (InstructGPT stage 1).

Loss: negative log-likelihood of completion / assistant tokens only (prompt tokens are masked), with EOS
appended to every completion and learned, so the model knows where to stop. The loss is a token mean over the
whole global batch (not a mean of micro-batch means), so gradient accumulation and multi-process runs give the
same gradients as one big batch.

    from rlhfkit import sft
    sft.train(sft.Config(model="runs/base", data="demos.jsonl", output_dir="runs/sft"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.algorithms.lm_step import FinetuneConfig, finetune


@dataclass
class Config(FinetuneConfig):
    """Every field is lm_step.FinetuneConfig's (shared with `bon --finetune`)."""


def train(cfg: Config) -> Path:
    cfg.validate()  # as the command line does (config.resolve), so a bad config fails before any data loads
    return finetune(cfg)
