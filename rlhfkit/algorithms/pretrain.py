"""`rlhfkit pretrain`: train a causal LM from scratch on a language-modelling dataset, with sequence packing.

Documents (text, or whole conversations rendered with the chat template) are tokenised, joined with EOS and
cut into full blocks of `block_size` tokens (GPT-style packing: no padding, every token trains).

    from rlhfkit import pretrain
    pretrain.train(pretrain.Config(data="corpus.jsonl", tokenizer="runs/tok", output_dir="runs/base"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.engine import TrainConfig, seed_everything
from rlhfkit.algorithms.lm_step import train_on_examples


@dataclass
class Config(TrainConfig):
    data: str = ""
    """Language-modelling data (text or messages rows), a file or hub id."""
    tokenizer: str = ""
    """Tokenizer directory or hub id (e.g. from `rlhfkit tokenizer`)."""
    init_from: str = ""
    """Continue pretraining this model instead of building a new one from the architecture fields."""
    split: str = "train"
    """Split to use for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. body=text."""
    skip_invalid: bool = False
    """Skip (and count) invalid rows instead of stopping at them."""
    block_size: int = 128
    """Tokens per packed training sequence."""
    hidden_size: int = 128
    """Width of a new Llama model."""
    num_layers: int = 4
    """Transformer blocks of a new model."""
    num_heads: int = 4
    """Attention heads of a new model."""
    intermediate_size: int = 0
    """MLP width of a new model (0: 4 x hidden_size)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the LM head in a new model. Off by default: with it on, the built-in
    world's 1 M-parameter model collapsed the embeddings of tokens that are unpredictable where they first
    appear (object names and colours: mean pairwise cosine 0.87-0.92 after pretraining), because the
    tied output layer pushes them towards one vector to spread probability evenly. The input then cannot tell
    them apart, so nothing can be copied from the prompt (docs/benchmarks.md)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""

    def validate(self) -> None:
        self.validate_common()
        if not self.data or not self.tokenizer and not self.init_from:
            raise ValueError("data and tokenizer (or init_from) are required")
        if self.lora_r and not self.init_from:
            raise ValueError("lora_r: LoRA adapts an existing model; set init_from (or lora_r 0 to build a new one)")


def train(cfg: Config) -> Path:
    cfg.validate()  # as the command line does (config.resolve)
    seed_everything(cfg.seed)
    rows = data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid,  # before any model loads
                              expect=[data_lib.DataType.LM])
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.init_from)
    if cfg.init_from:
        models.check_quantization(cfg.load_in_4bit)
        model = models.apply_lora(models.load_causal_lm(cfg.init_from, tokenizer, load_in_4bit=cfg.load_in_4bit), cfg,
                                  cfg.init_from)
    else:
        model = models.build_llama(tokenizer, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                                   cfg.intermediate_size, max_position_embeddings=max(512, cfg.block_size),
                                   seed=cfg.seed, tie_word_embeddings=cfg.tie_word_embeddings)
    blocks = data_lib.pack((data_lib.lm_example(tokenizer, r) for r in rows), cfg.block_size)
    if not blocks:
        raise data_lib.DataError(f"{cfg.data}: fewer tokens than one block of {cfg.block_size}")
    examples = [data_lib.Example(b, [True] * len(b)) for b in blocks]
    print(f"pretrain: {len(rows)} documents -> {len(blocks)} blocks of {cfg.block_size} tokens, "
          f"{models.n_params(model) / 1e6:.2f} M parameters")
    return train_on_examples(cfg, model, tokenizer, examples, {}, name="pretrain")
