"""Next-token log-likelihood training, shared by `sft`, `pretrain` and `bon --finetune` (rejection sampling).

Loss: negative log-likelihood of the target tokens (completions / assistant turns for fine-tuning, every token for
pretraining), a token mean over the whole global batch (not a mean of micro-batch means), so gradient accumulation
and multi-process runs give the same gradients as one big batch (engine docstring).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.engine import (
    Engine, StepSampler, TrainConfig, all_reduce_sum, resolve_batch, seed_everything, setup_distributed, total_steps,
)
from rlhfkit.models.layout import sequences_layout, to_device, use_packed
from rlhfkit.models.logps import TokenLogprobs


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning a causal LM on rows of a dataset (`rlhfkit sft`'s settings; `bon --finetune` fills them too)."""

    model: str = ""
    """Model to fine-tune: a local directory or hub id of any causal LM."""
    tokenizer: str = ""
    """Tokenizer directory or hub id (default: the model's)."""
    data: str = ""
    """Training data: prompt-completion; language modelling, as text (loss on every token) or conversational
    messages (loss on every assistant turn); or preference rows (trains on chosen)."""
    split: str = "train"
    """Split to use for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt,answer=completion."""
    skip_invalid: bool = False
    """Skip (and count) invalid rows instead of stopping at them."""
    max_length: int = 512
    """Maximum tokens per sequence; prompts are cut from the left first, completions never silently."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate."""
    packing: bool = False
    """Padding-free batches: pack each micro-batch's examples into rows of at most max_length tokens, with
    position ids restarting per example so they never attend to each other. (On CUDA every batch is padding-free
    already: all tokens in one sequence, attention by example.)"""
    trust_remote_code: bool = False
    """Allow model code from the hub (off by default: it runs arbitrary Python)."""

    def validate(self) -> None:
        self.validate_common()
        if not self.model or not self.data:
            raise ValueError("model and data are required")


# The data types fine-tuning trains on; load_rows checks every row against the one the file holds.
ACCEPTS = (data_lib.DataType.PROMPT_COMPLETION, data_lib.DataType.LM, data_lib.DataType.PREFERENCE,
           data_lib.DataType.IMPLICIT_PREFERENCE)


def tokenise(tokenizer, rows: list[dict], max_length: int, counter: dict) -> list[data_lib.Example]:
    out = []
    for row in rows:
        if "chosen" in row and "completion" not in row:  # preference rows: imitate the chosen response
            prompt, chosen, _ = data_lib.preference_parts(row)
            row = {"prompt": prompt, "completion": chosen}
        elif "prompt" not in row and "messages" not in row:  # a text row: every token is a target, as in pretrain
            ids = data_lib.lm_example(tokenizer, row)
            if len(ids) > max_length:
                ids = ids[:max_length]
                data_lib._count(counter, "text_truncated")
            out.append(data_lib.Example(ids, [True] * len(ids)))
            continue
        out.append(data_lib.sft_example(tokenizer, row, max_length, counter))
    return out


def finetune(cfg: FinetuneConfig) -> Path:
    """`rlhfkit sft`: load the rows, the tokenizer and the model, then train on the rows' completions."""
    seed_everything(cfg.seed)
    # bad data fails first, before any model loads
    rows = data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid, expect=ACCEPTS)
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    models.check_quantization(cfg.load_in_4bit)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code, load_in_4bit=cfg.load_in_4bit)
    model = models.apply_lora(model, cfg, cfg.model)
    counter: dict = {}
    examples = tokenise(tokenizer, rows, cfg.max_length, counter)
    return train_on_examples(cfg, model, tokenizer, examples, counter, name="sft", packing=cfg.packing,
                             max_length=cfg.max_length)


def train_on_examples(cfg: TrainConfig, model, tokenizer, examples: list[data_lib.Example], counter: dict,
                      name: str, packing: bool = False, max_length: int = 0) -> Path:
    """The NLL training loop of `sft`, `bon --finetune` and `pretrain` (pretraining is SFT with every token in the
    loss)."""
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    if dist.is_main:
        config_lib.save(cfg, out / "config.yaml")
        if counter:
            print(f"{name}: truncation counts {counter}")
    sampler = StepSampler(len(examples), resolve_batch(cfg, dist.world_size), cfg.seed)
    n_steps = total_steps(cfg, sampler.steps_per_epoch)
    model.train()
    engine = Engine(cfg, TokenLogprobs(model), n_steps, name=name, dist_info=dist)
    pad, dev = tokenizer.pad_token_id, engine.dist.device
    packed = use_packed(model, dev)  # the GPU layout (layout.use_packed): every token once, attention by example
    t0 = time.perf_counter()
    tokens_seen = 0
    for step in engine.remaining_steps():
        # 1. this step's global batch; the denominator counts loss tokens over ALL of it (every rank agrees)
        idx = sampler.indices(step)
        n_loss_tokens = sum(sum(examples[i].loss_mask[1:]) for i in idx)
        loss_total = torch.zeros((), device=dev)  # read once per step: a read is a host sync
        # 2. forward/backward over this process's micro-batches
        for micro in engine.my_micro_batches(idx):
            batch = [examples[i] for i in micro]
            if packed:
                input_ids, attention, loss_mask = data_lib.pad_right([e.input_ids for e in batch], pad,
                                                                     [e.loss_mask for e in batch])
                lay = sequences_layout(input_ids, attention, loss_mask)
                lay = {"packed": lay["packed"].to(dev), "labels": to_device(lay["labels"], dev),
                       "dest": to_device(lay["dest"], dev)}
                with engine.autocast():
                    logprobs = engine.model(input_ids, None, loss_mask, layout=lay)["logprobs"]
            elif packing:
                input_ids, loss_mask, pos = data_lib.pack_rows(batch, max_length, pad)
                with engine.autocast():
                    logprobs = engine.model(input_ids.to(dev), None, loss_mask.to(dev),
                                            packed_position_ids=pos.to(dev))["logprobs"]
            else:
                input_ids, attention, loss_mask = data_lib.pad_right([e.input_ids for e in batch], pad,
                                                                     [e.loss_mask for e in batch])
                with engine.autocast():
                    logprobs = engine.model(input_ids.to(dev), attention.to(dev), loss_mask.to(dev))["logprobs"]
            loss = -logprobs.sum() / max(1, n_loss_tokens)
            engine.backward(loss)
            loss_total += loss.detach()
            n_tokens = sum(len(e.input_ids) for e in batch)
            tokens_seen += n_tokens
            engine.count(samples=len(batch), tokens=n_tokens)
        # 3. update and log
        loss_value = all_reduce_sum(loss_total).item()
        engine.step({"train/loss": loss_value, "train/tokens": tokens_seen,
                     "train/ppl": float(torch.tensor(loss_value).exp())}, batch_info=f"indices {idx}")
    engine.close()
    if dist.is_main:
        models.save(model, tokenizer, out, merge=cfg.merge, metadata={"stage": name, "steps": engine.step_count,
                                                     "skipped_steps": engine.skipped_steps,
                                                     "truncation": counter,
                                                     "train_seconds": time.perf_counter() - t0})
    return out
