"""`rlhfkit rm`: a Bradley-Terry reward model (InstructGPT stage 2), or an ensemble of them.

    P(chosen > rejected) = sigmoid(r(x, y_c) - r(x, y_r))              (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1)
    loss = -log sigmoid(r_c - r_r - margin) + center_coef (r_c + r_r)^2      (losses.bradley_terry_loss)
    ties (rows with "tie": true, ties="soft"): cross-entropy towards P = 0.5   (losses.bt_soft_loss)

Backbones: a causal LM directory (e.g. the SFT model, as InstructGPT initialised its RM) loaded as
`AutoModelForSequenceClassification(num_labels=1)`: transformers adds a linear `score` head, which we re-initialise
with std `head_init_std` (default 1/sqrt(hidden+1), so the initial reward has about unit variance, as in
Ziegler et al.'s lm-human-preferences; bias-free) and read at the LAST real token, which is the EOS we append to
every response. Or any sequence-classification encoder (BERT, MiniLM, DeBERTa): its pooled head. A checkpoint
that already is a one-label sequence classifier keeps its head.

Chosen and rejected go through the model in ONE forward pass; identical sequences in a micro-batch (a response
shared by several pairs of one prompt) are forwarded once. With a causal-LM backbone (`share_prompt`, default) the
prompt is forwarded once too: a micro-batch becomes rows of [prompt | response_1 | response_2 ...] blocks where each
response sees the prompt and itself only, with the positions of a separate row (layout.build_layout, the layout
DPO uses), and the head reads each response's last token: the same rewards as separate right-padded rows, with
fewer tokens. Encoders attend both ways, so they keep the padded rows. `group_by_prompt` makes a
training unit one prompt with all its pairs (a K-way ranking expands into K(K-1)/2 pairs), its loss the mean over
those pairs, as InstructGPT did so that one prompt's correlated pairs neither dominate an epoch nor overfit; then
`micro_batch_size` counts prompts. Otherwise a unit is one pair and `micro_batch_size` counts pairs.

After training, `normalize` fits gain/bias so rewards on reference samples have mean 0 and std 1 (PITFALLS PPO #1;
the reference is `norm_data`, e.g. samples of the SFT policy, or the training responses), stored in
rlhfkit.json and applied by `rewards.load_reward`. `ensemble_size` N trains N members (seeds seed+i: different
head init and data order) into member-0 .. member-{N-1}.

    from rlhfkit import rm
    rm.train(rm.Config(model="runs/sft", data="preferences.jsonl", output_dir="runs/rm"))
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit.math import losses
from rlhfkit import models
from rlhfkit.engine import (
    Engine, StepSampler, TrainConfig, all_reduce_sum, seed_everything, setup_distributed, total_steps,
)
from rlhfkit.models.layout import packed_hidden_states, shared_prompt_layout, to_device, use_packed
from rlhfkit.models.rewards import (
    encode_scored, encode_scored_parts, forward_scores, is_last_token_model, layout_scores,
)


@dataclass
class Config(TrainConfig):
    model: str = ""
    """Backbone: a causal LM directory / hub id (a score head is added) or any one-label sequence classifier."""
    tokenizer: str = ""
    """Tokenizer directory or hub id (default: the model's)."""
    data: str = ""
    """Preference data: prompt/chosen/rejected (or implicit chosen/rejected); optional tie, margin, group columns."""
    split: str = "train"
    """Split to use for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt,good=chosen,bad=rejected."""
    skip_invalid: bool = False
    """Skip (and count) invalid rows instead of stopping at them."""
    max_length: int = 512
    """Maximum tokens of prompt+response; the prompt is cut from the left (counted), no pair is ever dropped."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (InstructGPT used 9e-6 for a 6B RM; small models like 1e-4)."""
    ties: Literal["drop", "soft"] = "drop"
    """Rows with "tie": true are dropped (counted) or trained towards P(chosen > rejected) = 0.5."""
    margin: bool = False
    """Use a `margin` column (if present) as the margin the chosen reward must win by (Llama 2)."""
    center_coef: float = 0.0
    """Reward centering coefficient: + coef (r_c + r_r)^2 per pair (Eisenstein et al. 2023)."""
    group_by_prompt: bool = False
    """One training unit = one prompt with all its pairs (by the `group` column, else the prompt); loss averaged
    per prompt and micro_batch_size counts prompts (InstructGPT). Off: a unit is one pair."""
    head_init_std: float = 0.0
    """Std of a newly added score head (0: 1/sqrt(hidden+1)); an existing sequence-classification head is kept."""
    normalize: bool = True
    """After training, fit gain/bias so rewards on the reference samples have mean 0, std 1 (stored, applied when
    scoring)."""
    norm_data: str = ""
    """Reference samples for normalisation (prompt+completion, candidates or preference rows); default: the
    training data's chosen and rejected responses."""
    norm_samples: int = 2048
    """At most this many reference sequences (seeded random subset; 0: all)."""
    ensemble_size: int = 1
    """Train N members with seeds seed+i (different head init and data order) into member-0 .. member-{N-1}."""
    share_prompt: bool = True
    """Causal-LM backbones: forward a prompt once for all its responses in a micro-batch (exact; module docstring).
    Off: one right-padded row per sequence."""
    score_batch_size: int = 64
    """Sequences per forward pass when scoring the normalisation reference."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off by default: it runs arbitrary Python)."""

    def validate(self) -> None:
        self.validate_common()
        if not self.model or not self.data:
            raise ValueError("model and data are required")
        if self.ties not in ("drop", "soft"):
            raise ValueError(f"ties: {self.ties!r} is not one of drop, soft")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")


# ----------------------------------------------------------------------------------------------- data
@dataclass
class PairSet:
    """Tokenised preference data: unique sequences, pairs indexing them, and training units (lists of pairs)."""

    seqs: list[list[int]]  # unique prompt+response token ids
    prefix_len: list[int]  # per sequence: how many of its leading tokens are the (possibly cut) prompt
    chosen: list[int]  # per pair: index into seqs
    rejected: list[int]
    target: list[float]  # P(chosen preferred): 1, or 0.5 for a kept tie
    margin: list[float]
    units: list[list[int]]  # per unit: pair indices (one pair, or one prompt's pairs)
    counts: dict[str, int]


def build_pairs(tokenizer, rows: list[dict], cfg: Config) -> PairSet:
    seqs: list[list[int]] = []
    prefix_len: list[int] = []
    index: dict[tuple, int] = {}
    counts: dict[str, int] = {"rows": len(rows), "ties_dropped": 0, "ties_soft": 0, "identical_pairs": 0}
    chosen, rejected, target, margin, group_of = [], [], [], [], []

    def seq_id(prompt, response) -> int:
        p, c = encode_scored_parts(tokenizer, prompt, response, cfg.max_length, counts)
        ids = tuple(p + c)
        if ids not in index:
            index[ids] = len(seqs)
            seqs.append(list(ids))
            prefix_len.append(len(p))
        return index[ids]

    for n, row in enumerate(rows):
        tie = bool(row.get("tie", False))
        if tie and cfg.ties == "drop":
            counts["ties_dropped"] += 1
            continue
        counts["ties_soft"] += tie
        prompt, c, r = data_lib.preference_parts(row)
        ci, ri = seq_id(prompt, c), seq_id(prompt, r)
        counts["identical_pairs"] += ci == ri  # no gradient (r_c - r_r == 0 exactly); kept and counted
        chosen.append(ci)
        rejected.append(ri)
        target.append(0.5 if tie else 1.0)
        m = row.get("margin") if cfg.margin else None
        margin.append(float(m) if isinstance(m, (int, float)) and not tie else 0.0)
        key = row.get("group") if row.get("group") is not None else json.dumps(prompt, sort_keys=True)
        group_of.append(key if cfg.group_by_prompt else n)
    if not chosen:
        raise data_lib.DataError(f"{cfg.data}: no pairs left to train on ({counts})")
    units: dict[Any, list[int]] = {}
    for i, g in enumerate(group_of):
        units.setdefault(g, []).append(i)
    counts.update(pairs=len(chosen), units=len(units), sequences=len(seqs))
    return PairSet(seqs, prefix_len, chosen, rejected, target, margin, list(units.values()), counts)


# ----------------------------------------------------------------------------------------------- model
def is_classifier(path: str, trust_remote_code: bool = False) -> bool:
    """Whether a model directory / hub id already is a sequence classifier (so its head is kept). An adapter
    directory is one when it was trained as one (peft task SEQ_CLS) or its base model is."""
    from transformers import AutoConfig

    if models.is_adapter_dir(path):
        return models.adapter_task(path) == "SEQ_CLS" or is_classifier(models.adapter_base(path), trust_remote_code)
    archs = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).architectures or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def load_backbone(cfg: Config, seed: int):
    """(model, tokenizer): a one-label sequence classifier, with a freshly added head re-initialised small, and
    LoRA adapters when cfg.lora_r > 0 (the head then trains as a whole: peft's modules_to_save)."""
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    classifier = is_classifier(cfg.model, cfg.trust_remote_code)
    torch.manual_seed(seed)
    model = models.load_sequence_classifier(cfg.model, tokenizer, cfg.trust_remote_code, load_in_4bit=cfg.load_in_4bit)
    if not classifier:
        head = model.score if is_last_token_model(model) else _encoder_head(model)
        std = cfg.head_init_std or 1.0 / math.sqrt(head.in_features + 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * std)
            if head.bias is not None:
                head.bias.zero_()
    model.config.problem_type = "regression"
    return models.apply_lora(model, cfg, cfg.model, task="SEQ_CLS", seed=seed), tokenizer


def _encoder_head(model) -> torch.nn.Linear:
    head = getattr(model, "classifier", None)
    head = getattr(head, "out_proj", head)  # RoBERTa / DeBERTa-style heads end in out_proj
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__}: cannot find the linear score head to initialise")
    return head


class PairScorer(torch.nn.Module):
    """Wraps the reward model so DDP sees one forward -> rewards (S,): of right-padded sequences (input_ids and
    attention_mask (S, T)), or of a prompt-sharing `build_layout` micro-batch (input_ids, position_ids, mask, and
    `last`, the flat index of each sequence's final token)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                last: torch.Tensor | None = None, packed=None) -> torch.Tensor:
        if packed is not None:  # `packed` asks for each sequence's final token (layout.build_packed)
            return self.model.score(packed_hidden_states(self.model, packed)).squeeze(-1).float()
        if last is None:
            return forward_scores(self.model, input_ids, attention_mask)
        return layout_scores(self.model, input_ids, position_ids, mask, last)


def micro_batch_inputs(ps: PairSet, uniq: list[int], pad_id: int, share_prompt: bool, device="cpu",
                       packed: bool = False) -> tuple[dict, int]:
    """PairScorer inputs on `device` for the unique sequences `uniq` (reward i belongs to uniq[i]), and the tokens
    processed. `share_prompt`: one block per distinct prompt prefix holding all its responses, as rows under
    block masks or `packed` (layout.use_packed); else padded rows."""
    if not share_prompt:
        ids, attn, _ = data_lib.pad_right([ps.seqs[s] for s in uniq], pad_id)
        return {"input_ids": to_device(ids, device), "attention_mask": to_device(attn, device)}, int(attn.sum())
    lay = shared_prompt_layout([ps.seqs[s][:ps.prefix_len[s]] for s in uniq],
                               [ps.seqs[s][ps.prefix_len[s]:] for s in uniq], pad_id, packed)
    if packed:
        return {"packed": lay.packed.with_needed(lay.last).to(device)}, lay.tokens
    inputs = {"input_ids": lay.input_ids, "position_ids": lay.position_ids, "mask": lay.mask, "last": lay.last}
    return {k: v.to(device) for k, v in inputs.items()}, lay.tokens


# ----------------------------------------------------------------------------------------------- training
def train(cfg: Config) -> Path:
    """Train one reward model, or `ensemble_size` members; returns the output directory."""
    cfg.validate()  # as the command line does (config.resolve)
    out = Path(cfg.output_dir)
    if cfg.ensemble_size == 1:
        return train_one(cfg)
    names = [f"member-{i}" for i in range(cfg.ensemble_size)]
    config_lib.save(cfg, out / "config.yaml")
    for i, name in enumerate(names):
        member_out = out / name
        done = (member_out / "rlhfkit.json").exists() and ((member_out / "config.json").exists()
                                                            or models.is_adapter_dir(member_out))
        if done and cfg.resume:
            continue  # finished before an interruption
        can_resume = cfg.resume and (member_out / "checkpoints").exists()
        train_one(replace(cfg, output_dir=str(member_out), seed=cfg.seed + i, ensemble_size=1, resume=can_resume))
    (out / "rlhfkit.json").write_text(json.dumps({"stage": "rm", "ensemble": names}, indent=2))
    return out


def train_one(cfg: Config) -> Path:
    # 1. model, tokenizer, data: every pair tokenised once, truncations counted, nothing dropped silently
    seed_everything(cfg.seed)
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    rows = data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid,  # before any model loads
                              expect=[data_lib.DataType.PREFERENCE, data_lib.DataType.IMPLICIT_PREFERENCE])
    models.check_quantization(cfg.load_in_4bit)
    model, tokenizer = load_backbone(cfg, cfg.seed)
    ps = build_pairs(tokenizer, rows, cfg)
    if dist.is_main:
        config_lib.save(cfg, out / "config.yaml")
        print(f"rm: {ps.counts}")
    global_batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps * dist.world_size
    sampler = StepSampler(len(ps.units), global_batch, cfg.seed)
    n_steps = total_steps(cfg, sampler.steps_per_epoch)
    model.train()
    engine = Engine(cfg, PairScorer(model), n_steps, name="rm", dist_info=dist)
    pad, dev = tokenizer.pad_token_id, engine.dist.device
    share = cfg.share_prompt and is_last_token_model(model)
    packed = share and use_packed(model, dev)
    t0 = time.perf_counter()
    for step in engine.remaining_steps():
        # 2. this step's global batch of units; a unit's pairs weigh 1/len(unit) and the loss is a mean over
        #    the GLOBAL batch's units, so accumulation and process count do not change the gradient
        idx = sampler.indices(step)
        sums = torch.zeros(7, device=dev)  # loss, r_c, r_r, correct, n_non_tie, n_pairs, margin (read once a step)
        for micro in engine.my_micro_batches(idx):
            pairs = [p for u in micro for p in ps.units[u]]
            weight = to_device(torch.tensor([1.0 / len(ps.units[u]) for u in micro for _ in ps.units[u]]), dev)
            # 3. one forward pass over the unique sequences of chosen AND rejected (concatenated)
            uniq = sorted({ps.chosen[p] for p in pairs} | {ps.rejected[p] for p in pairs})
            pos = {s: i for i, s in enumerate(uniq)}
            inputs, n_tokens = micro_batch_inputs(ps, uniq, pad, share, dev, packed)
            with engine.autocast():
                r = engine.model(**inputs).float()  # (S,)
            r_c = r[to_device(torch.tensor([pos[ps.chosen[p]] for p in pairs]), dev)]  # (P,)
            r_r = r[to_device(torch.tensor([pos[ps.rejected[p]] for p in pairs]), dev)]
            # 4. Bradley-Terry (ties: soft target 0.5), optional margin and centering
            tgt = to_device(torch.tensor([ps.target[p] for p in pairs]), dev)
            tie = tgt < 1
            margin = to_device(torch.tensor([ps.margin[p] for p in pairs]), dev) if cfg.margin else None
            hard, _ = losses.bradley_terry_loss(r_c, r_r, margin, cfg.center_coef)
            per_pair = hard
            if any(ps.target[p] < 1 for p in pairs):  # asked on the host: no wait for the device
                soft, _ = losses.bt_soft_loss(r_c, r_r, tgt, cfg.center_coef)
                per_pair = torch.where(tie, soft, hard)
            loss = (per_pair * weight).sum() / len(idx)
            engine.backward(loss)
            d = (r_c - r_r).detach()
            keep = ~tie
            sums += torch.stack([loss.detach(), r_c.detach().sum(), r_r.detach().sum(), ((d > 0) & keep).sum(),
                                 keep.sum(), d.new_tensor(0.0) + len(pairs), d.sum()]).float()
            engine.count(samples=len(pairs), tokens=n_tokens)
        # 5. update and log (metrics over the whole global batch)
        s = all_reduce_sum(sums)
        n = max(1.0, s[5].item())
        engine.step({"train/loss": s[0].item(), "rewards/chosen": s[1].item() / n, "rewards/rejected": s[2].item() / n,
                     "rewards/margin": s[6].item() / n, "rewards/accuracy": s[3].item() / max(1.0, s[4].item())},
                    batch_info=f"units {idx}")
    engine.close()
    # 6. normalisation on reference samples, then save (plain transformers reloads it; rlhfkit.json beside it)
    if dist.is_main:
        model.eval()
        meta: dict[str, Any] = {"stage": "rm", "max_length": cfg.max_length, "steps": engine.step_count,
                                "skipped_steps": engine.skipped_steps, "data": ps.counts, "seed": cfg.seed,
                                "train_seconds": time.perf_counter() - t0}
        if cfg.normalize:
            meta["normalize"] = fit_normalization(model, tokenizer, cfg, ps, dev)
        models.save(model, tokenizer, out, metadata=meta, merge=cfg.merge)
    return out


# ----------------------------------------------------------------------------------------------- normalisation
def reference_sequences(tokenizer, cfg: Config, ps: PairSet) -> list[list[int]]:
    """Token ids of the normalisation reference: `norm_data` responses, or the training responses."""
    if not cfg.norm_data:
        seqs = ps.seqs
    else:
        seqs, counter = [], {}
        for row in data_lib.load_rows(cfg.norm_data):
            if "responses" in row:
                items = [(row["prompt"], r) for r in row["responses"]]
            elif "completion" in row:
                items = [(row["prompt"], row["completion"])]
            else:
                p, c, r = data_lib.preference_parts(row)
                items = [(p, c), (p, r)]
            seqs += [encode_scored(tokenizer, p, c, cfg.max_length, counter) for p, c in items]
    if cfg.norm_samples and len(seqs) > cfg.norm_samples:
        seqs = random.Random(cfg.seed).sample(seqs, cfg.norm_samples)
    return seqs


@torch.no_grad()
def fit_normalization(model, tokenizer, cfg: Config, ps: PairSet, device) -> dict[str, float]:
    """gain, bias with gain * r + bias having mean 0, std 1 over the reference sequences."""
    seqs = reference_sequences(tokenizer, cfg, ps)
    scores = score_sequences(model, seqs, tokenizer.pad_token_id, cfg.score_batch_size, device)
    mean, std = scores.mean().item(), scores.std(unbiased=False).item()
    gain = 1.0 / std if std > 1e-8 else 1.0
    return {"gain": gain, "bias": -mean * gain, "mean": mean, "std": std, "n": len(seqs)}


@torch.no_grad()
def score_sequences(model, seqs: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Raw rewards (N,) of token-id sequences, batched by length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, attn, _ = data_lib.pad_right([seqs[i] for i in idx], pad_id)
        out[idx] = forward_scores(model, ids.to(device), attn.to(device)).cpu()
    return out
