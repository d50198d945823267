"""Loading, building and saving Hugging Face models and tokenizers, with the safe defaults.

- weights: safetensors only (`use_safetensors=True`); no pickled checkpoints are ever loaded.
- `trust_remote_code` is off unless the user asks for it.
- pad token: explicit. If a tokenizer has none we add a dedicated `<|pad|>` token rather than reusing EOS, because
  pad == eos makes naive loss masks hide EOS and the model never learns to stop (PITFALLS, data). Our own masks
  come from lengths, never from token ids, so a tokenizer that already has pad == eos is still handled right.
- dropout: disabled in every model we train or score with (PITFALLS PPO #11: otherwise the PPO ratio is not 1
  at step 0 and log-probs are noisy).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from . import fusedops

PAD_TOKEN = "<|pad|>"


class ModelError(ValueError):
    """A model or tokenizer that cannot be loaded, with the path it came from."""


def _loading(what: str, name_or_path: str):
    """Turn the library's many loading errors into one clear message naming the path."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, ModelError):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{name_or_path}: cannot load a {what} ({first})") from e

    return ctx()


def quiet_transformers() -> None:
    """Our own progress bars say what runs; transformers' per-shard bars are noise in a pipeline."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    quiet_transformers()
    with _loading("tokenizer", name_or_path):
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tok)
    tok.padding_side = padding_side
    if tok.eos_token_id is None:
        # Encoder tokenizers (BERT, MiniLM) have no EOS; we use SEP so completions still end in a learnable stop.
        if getattr(tok, "sep_token", None) is not None:
            tok.eos_token = tok.sep_token
        else:
            raise ValueError(f"{name_or_path}: tokenizer has no eos_token; set one (e.g. tok.eos_token = '</s>')")
    return tok


def ensure_pad_token(tok) -> bool:
    """Give the tokenizer a pad token distinct from EOS when it has none. Returns True if one was added."""
    if tok.pad_token_id is None:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
        return True
    if tok.pad_token_id == tok.eos_token_id:
        warnings.warn(
            "tokenizer has pad_token == eos_token; rlhfkit masks by length so EOS is still learned, "
            "but other tools may hide EOS from the loss",
            stacklevel=2,
        )
    return False


def inference_device(device: str | torch.device = "auto") -> torch.device:
    """Where inference-only commands (generate, sample, eval, eval-rm, serve-rm, bon) run: "auto" is the first CUDA
    device when there is one, else the CPU. (Trainers place themselves through engine.setup_distributed.)"""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if cfg is not None and isinstance(getattr(cfg, key, None), float):
            setattr(cfg, key, 0.0)
    return model


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_causal_lm(
    name_or_path: str, tokenizer=None, trust_remote_code: bool = False, dtype: str = "fp32", keep_dropout: bool = False
):
    """Any HF causal LM from a local directory or hub id; embeddings resized if we added a pad token."""
    from transformers import AutoModelForCausalLM

    with _loading("causal language model (safetensors weights)", name_or_path):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=_dtype(dtype)
        )
    _fit_vocab(model, tokenizer)
    fusedops.fuse(model)
    return model if keep_dropout else disable_dropout(model)


def load_sequence_classifier(name_or_path: str, tokenizer=None, trust_remote_code: bool = False, dtype: str = "fp32"):
    """A one-label sequence-classification model (reward model) from a directory or hub id."""
    from transformers import AutoModelForSequenceClassification

    with _loading("sequence-classification model (safetensors weights)", name_or_path):
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=1, trust_remote_code=trust_remote_code, use_safetensors=True,
            dtype=_dtype(dtype)
        )
    _fit_vocab(model, tokenizer)
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    fusedops.fuse(model)
    return disable_dropout(model)


def _fit_vocab(model, tokenizer) -> None:
    if tokenizer is None:
        return
    n = len(tokenizer)
    if model.get_input_embeddings().weight.shape[0] < n:
        model.resize_token_embeddings(n)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        gen.eos_token_id = tokenizer.eos_token_id


def build_llama(tokenizer, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                intermediate_size: int = 0, max_position_embeddings: int = 512, seed: int = 0,
                tie_word_embeddings: bool = True):
    """A Llama built from a config, for training from scratch (the built-in world, tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    fusedops.fuse(model)
    return model


def n_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def save(model, tokenizer, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """save_pretrained (safetensors) so plain transformers reloads it; optional rlhfkit.json metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if metadata is not None:
        (out / "rlhfkit.json").write_text(json.dumps(metadata, indent=2))
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "rlhfkit.json"
    return json.loads(p.read_text()) if p.exists() else {}
