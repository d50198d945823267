"""`rlhfkit merge`: fold a saved LoRA adapter into its base model's weights, as a plain transformers model.

A `--lora-r` run saves a peft adapter directory (adapter_config.json + adapter_model.safetensors, a few MB) that
names its base model. rlhfkit's own commands load such a directory directly (merging it as they load); this command
writes the merged model once, for tools that expect full weights: W' = W + (lora_alpha / r) B A for every adapted
layer (Hu et al. 2021, sec. 4.1: merged, a LoRA model has no inference latency of its own).

    rlhfkit merge --adapter runs/sft-lora --output-dir runs/sft-merged
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit import models


@dataclass
class Config:
    adapter: str = ""
    """A LoRA adapter directory, as a `--lora-r` run saves it (reward-model adapters too)."""
    output_dir: str = ""
    """Where the merged model goes: config.json, model.safetensors, the tokenizer and rlhfkit.json."""
    trust_remote_code: bool = False
    """Allow model code from the hub for the base model (off by default: it runs arbitrary Python)."""

    def validate(self) -> None:
        if not self.adapter or not self.output_dir:
            raise ValueError("adapter and output_dir are required")


def run(cfg: Config) -> Path:
    if not models.is_adapter_dir(cfg.adapter):
        raise FileNotFoundError(f"{cfg.adapter}: no {models.ADAPTER_CONFIG} here (not a LoRA adapter directory)")
    out = models.merge_adapter(cfg.adapter, cfg.output_dir, cfg.trust_remote_code)
    print(f"merge: {cfg.adapter} + its base {models.adapter_base(cfg.adapter)} -> {out}")
    return out
