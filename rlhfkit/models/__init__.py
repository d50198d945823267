"""Loading, building and saving Hugging Face models and tokenizers, with the safe defaults.

- weights: safetensors only (`use_safetensors=True`); no pickled checkpoints are ever loaded.
- `trust_remote_code` is off unless the user asks for it.
- pad token: explicit. If a tokenizer has none we add a dedicated `<|pad|>` token rather than reusing EOS, because
  pad == eos makes naive loss masks hide EOS and the model never learns to stop (PITFALLS, data). Our own masks
  come from lengths, never from token ids, so a tokenizer that already has pad == eos is still handled right.
- dropout: disabled in every model we train or score with (PITFALLS PPO #11: otherwise the PPO ratio is not 1
  at step 0 and log-probs are noisy).
- LoRA (Hu et al. 2021) through peft: `apply_lora` is the one place a trainer's model gets adapters (`--lora-r`);
  `save` writes a standard peft adapter directory, and every loader here takes one (adapter_config.json) as a
  model, folding the adapter into its base model's weights, so later stages need no flag.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from rlhfkit.kernels import fusedops
from rlhfkit.models.modeling import adapters_disabled, is_lora  # noqa: F401  (adapters_disabled: trainers reach it from here)

PAD_TOKEN = "<|pad|>"


class ModelError(ValueError):
    """A model or tokenizer that cannot be loaded, with the path it came from."""


def _loading(what: str, name_or_path: str):
    """Turn the library's many loading errors into one clear message naming the path."""

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
    if is_adapter_dir(name_or_path) and not (Path(name_or_path) / "tokenizer_config.json").exists():
        name_or_path = adapter_base(name_or_path)  # an adapter saved without its tokenizer: the base model's
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


def autocast_for(precision: str, device: torch.device):
    """The Engine's autocast (`--precision`), for work done before the Engine exists (DPO's reference
    precomputation)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


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
    name_or_path: str, tokenizer=None, trust_remote_code: bool = False, dtype: str = "fp32", keep_dropout: bool = False,
    load_in_4bit: bool = False,
):
    """Any HF causal LM from a local directory or hub id; embeddings resized if we added a pad token. A LoRA adapter
    directory loads as its base model with the adapter merged in. `load_in_4bit`: NF4 weights for QLoRA (CUDA)."""
    from transformers import AutoModelForCausalLM

    if is_adapter_dir(name_or_path):
        return _merged(name_or_path, lambda base: load_causal_lm(base, tokenizer, trust_remote_code, dtype,
                                                                 keep_dropout, load_in_4bit))
    with _loading("causal language model (safetensors weights)", name_or_path):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=_dtype(dtype),
            **_quantization(load_in_4bit)
        )
    _fit_vocab(model, tokenizer)
    fusedops.fuse(model)
    return model if keep_dropout else disable_dropout(model)


def load_sequence_classifier(name_or_path: str, tokenizer=None, trust_remote_code: bool = False, dtype: str = "fp32",
                             load_in_4bit: bool = False):
    """A one-label sequence-classification model (reward model) from a directory or hub id (or a LoRA adapter
    directory of one, merged into its base)."""
    from transformers import AutoModelForSequenceClassification

    if is_adapter_dir(name_or_path):
        return _merged(name_or_path, lambda base: load_sequence_classifier(base, tokenizer, trust_remote_code, dtype,
                                                                           load_in_4bit))
    with _loading("sequence-classification model (safetensors weights)", name_or_path):
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=1, trust_remote_code=trust_remote_code, use_safetensors=True,
            dtype=_dtype(dtype), **_quantization(load_in_4bit)
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


def save(model, tokenizer, out_dir: str | Path, metadata: dict[str, Any] | None = None, merge: bool = False) -> Path:
    """save_pretrained (safetensors) so plain transformers reloads it; optional rlhfkit.json metadata.

    A LoRA model is saved as a peft adapter directory (adapter_config.json + adapter_model.safetensors, which
    `peft.PeftModel.from_pretrained` loads onto the base model); with `merge`, the adapter goes to out_dir/adapter
    and out_dir gets the merged model. Merging modifies `model` in place: call it when training is over."""
    out = Path(out_dir)
    if is_lora(model):
        _save_files(model, tokenizer, out / "adapter" if merge else out, metadata)
        if not merge:
            return out
        if _is_quantized(model):  # folding into 4-bit weights would round the update away: merge in full precision
            merge_adapter(out / "adapter", out)
            return out
        model = _merge_and_unload(model)
    return _save_files(model, tokenizer, out, metadata)


def _save_files(model, tokenizer, out: Path, metadata: dict[str, Any] | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    base = model.peft_config["default"].base_model_name_or_path if is_lora(model) else None
    if base and is_adapter_dir(base):
        # a LoRA run on top of a LoRA run: its base loads through rlhfkit's chain with the vocabulary it was trained
        # with, so the embeddings need not travel (peft's "auto" looks for a config.json there and warns)
        kwargs["save_embedding_layers"] = False
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if metadata is not None:
        (out / "rlhfkit.json").write_text(json.dumps(metadata, indent=2))
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "rlhfkit.json"
    return json.loads(p.read_text()) if p.exists() else {}


# ----------------------------------------------------------------------------------------------- LoRA (peft)
ADAPTER_CONFIG = "adapter_config.json"
# peft 0.18 asks transformers 5 for an attribute it renamed: a FutureWarning about peft, not about the run
_PEFT_NOISE = ".*is_gradient_checkpointing.*"


def _peft():
    try:
        import peft
    except ImportError:
        raise ModelError("LoRA needs the peft package (pip install peft)") from None
    return peft


def is_adapter_dir(path: str | Path) -> bool:
    """A peft adapter directory (what a `--lora-r` run saves), rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (its adapter_config.json's base_model_name_or_path)."""
    base = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{path}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    return base


def adapter_task(path: str | Path) -> str | None:
    """The peft task an adapter was trained for (CAUSAL_LM, SEQ_CLS), from its adapter_config.json."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("task_type")


def _merged(path: str | Path, load_base):
    """The base model (loaded by `load_base`, itself perhaps an adapter directory: a LoRA run on top of a LoRA
    run) with the adapter at `path` folded into its weights: a plain model, as fast as the base and saved as one."""
    peft = _peft()
    model = load_base(adapter_base(path))
    with _loading("LoRA adapter", str(path)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_NOISE, category=FutureWarning)
        return _merge_and_unload(peft.PeftModel.from_pretrained(model, str(path)))


def _merge_and_unload(model):
    """peft's merge_and_unload, minus the `peft_config` attribute it leaves on the plain model it returns (which
    would make a later apply_lora warn about adapters that no longer exist)."""
    model = model.merge_and_unload()
    model.__dict__.pop("peft_config", None)
    return model


def _quantization(load_in_4bit: bool) -> dict[str, Any]:
    """from_pretrained arguments for QLoRA's frozen NF4 weights (Dettmers et al. 2023: 4-bit NormalFloat, double
    quantisation, bf16 compute), or none. Needs CUDA and bitsandbytes: either missing is a ConfigError, one line."""
    if not load_in_4bit:
        return {}
    from rlhfkit.config import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError("load_in_4bit: QLoRA's 4-bit weights need a CUDA GPU, and there is none here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("load_in_4bit: needs the bitsandbytes package (pip install bitsandbytes)") from None
    import os

    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": q, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def check_quantization(load_in_4bit: bool) -> None:
    """Raise the ConfigError `_quantization` would, before any data or model is read."""
    _quantization(load_in_4bit)


def _is_quantized(model) -> bool:
    return any(getattr(m, "is_loaded_in_4bit", False) for m in model.modules())


def apply_lora(model, cfg, base: str | None, task: str | None = "CAUSAL_LM", seed: int | None = None):
    """`model` with LoRA adapters when cfg.lora_r > 0 (else `model` itself): every trainer calls this once on the
    model it trains. Only the adapters train (and, with task SEQ_CLS, the score head: peft's modules_to_save);
    the adapters' B starts at zero, so the wrapped model computes exactly what `model` did (Hu et al. 2021,
    sec. 4.1). `base`: the directory or hub id `model` was loaded from, recorded in the adapter so plain peft finds
    it. The adapters' random A is drawn from `seed` (default cfg.seed) alone, not from the global RNG."""
    if not cfg.lora_r:
        return model
    peft = _peft()
    targets = list(cfg.lora_target_modules)
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules="all-linear" if targets == ["all-linear"] else targets,
                             bias="none", task_type=task)
    if _is_quantized(model):  # QLoRA: norms in fp32, inputs that require grad for checkpointing (peft's recipe)
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(cfg.seed if seed is None else seed)
        warnings.filterwarnings("ignore", message=_PEFT_NOISE, category=FutureWarning)
        try:
            model = peft.get_peft_model(model, config)
        except ValueError as e:  # e.g. target modules that match nothing
            raise ModelError(f"lora_target_modules {targets}: {str(e).splitlines()[0]}") from None
    if base:  # an absolute path for a local base, so the adapter loads from any working directory
        model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve()) if Path(base).is_dir() \
            else base
    n_train, n_all = n_params(model, trainable_only=True), n_params(model)
    print(f"lora: rank {cfg.lora_r}, {n_train / 1e6:.3g} M of {n_all / 1e6:.3g} M parameters train "
          f"({100 * n_train / max(1, n_all):.2f}%)")
    return model


def reference_policy(policy, ref_model: str, tokenizer, trust_remote_code: bool = False):
    """The frozen reference policy of a trainer: `ref_model` when given; else the policy's initial weights. With
    LoRA those are the policy's own frozen weights, so the reference IS the policy, run under `adapters_disabled`
    (every reference forward is), with no second copy in memory; without LoRA, a frozen copy made now (before a
    resume loads trained weights)."""
    if ref_model:
        ref = load_causal_lm(ref_model, tokenizer, trust_remote_code)
    elif is_lora(policy):
        return policy
    else:
        ref = copy.deepcopy(policy)
    return ref.eval().requires_grad_(False)


def merge_adapter(adapter: str | Path, out_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """Fold a saved adapter into its base model and save the result as a plain transformers model (with the
    tokenizer and the adapter's rlhfkit.json, which gains `merged_from`)."""
    adapter = Path(adapter)
    if not is_adapter_dir(adapter):
        raise ModelError(f"{adapter}: not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    task = adapter_task(adapter)
    tok = load_tokenizer(str(adapter), trust_remote_code)
    load = load_sequence_classifier if task == "SEQ_CLS" else load_causal_lm
    model = load(str(adapter), tok, trust_remote_code)  # the base with the adapter merged in
    meta = read_metadata(adapter)
    meta["merged_from"] = str(adapter.resolve())
    return _save_files(model, tok, Path(out_dir), meta)
