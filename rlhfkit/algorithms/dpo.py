"""`rlhfkit dpo`: direct preference optimisation and its family, one trainer for every preference loss.

    from rlhfkit import dpo
    dpo.train(dpo.Config(model="runs/sft", data="prefs.jsonl", loss=["sigmoid"], beta=0.1, output_dir="runs/dpo"))
    rlhfkit dpo --model runs/sft --data prefs.jsonl --loss sigmoid,sft --loss-weights 1.0,0.2

The loss is a list of `losses.LossType` members (sigmoid = DPO / cDPO, ipo, hinge, simpo, orpo, kto, sft), combined
with `loss_weights`; the loop asks each member what it needs (reference log-probs? per-token averages?) and never
branches on names. Each pair is one block [prompt | chosen | rejected] with the prompt encoded once, exactly two
rows' computation (`models.layout`; the LM head only at completion positions, `models.logps`). Reference log-probs
are precomputed once and cached on disk, or computed on the fly in the same layout; reference-free losses (simpo,
orpo, sft) never load a reference, and under LoRA the reference is the policy with its adapters off. KTO
(Ethayarajh et al. 2024) trains on unpaired rows (`data.preference`); its reference point z0 comes from mismatched
pairs over the whole global batch (docs/dpo.md). `train`'s loop: batch -> reference log-probs -> policy log-probs,
loss and backward (`paired_step`, `kto_step`) -> optimiser step and metrics (`StepTotals`).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.data.preference import Example, tokenise
from rlhfkit.engine import (
    Engine, StepSampler, TrainConfig, all_reduce_sum, barrier, refcache, seed_everything, setup_distributed,
    total_steps,
)
from rlhfkit.math.losses import LossType, kto_reference_point, preference_loss
from rlhfkit.models import autocast_for
from rlhfkit.models.layout import Layout, make_layout, to_device, use_packed
from rlhfkit.models.logps import SequenceLogprobs, continuation_logps, run_layout
from rlhfkit.models.modeling import backbone, padding_free


@dataclass
class Config(TrainConfig):
    model: str = ""
    """Policy to train: a local directory or hub id of a causal LM (usually the SFT model)."""
    ref_model: str = ""
    """Reference model (default: the policy's initial weights). Never loaded for reference-free losses."""
    tokenizer: str = ""
    """Tokenizer directory or hub id (default: the model's)."""
    data: str = ""
    """Preference data: prompt/chosen/rejected, chosen/rejected (implicit prompt), or prompt/completion/label (kto)."""
    split: str = "train"
    """Split to use for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt,good=chosen,bad=rejected."""
    skip_invalid: bool = False
    """Skip (and count) invalid rows instead of stopping at them."""
    loss: list[str] = field(default_factory=lambda: ["sigmoid"])
    """Preference losses (LossType values): sigmoid, ipo, hinge, simpo, orpo, kto, sft; several are summed."""
    loss_weights: list[float] = field(default_factory=list)
    """One weight per loss (default: 1.0 each), e.g. 1.0,0.2 for sigmoid,sft."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward (DPO/IPO/hinge/SimPO/KTO beta; ORPO's lambda)."""
    label_smoothing: float = 0.0
    """cDPO label-flip probability for sigmoid (DPO paper appendix); 0 is plain DPO."""
    length_alpha: float = 0.0
    """R-DPO length regulariser for sigmoid (Park et al. 2024): alpha per token of |y_w| - |y_l| added to the
    logit, so preferences explained by length do not teach the policy to pad. 0 is plain DPO."""
    gamma: float = 0.5
    """SimPO target reward margin."""
    desirable_weight: float = 1.0
    """KTO lambda_D: weight of desirable examples."""
    undesirable_weight: float = 1.0
    """KTO lambda_U: weight of undesirable examples."""
    max_length: int = 512
    """Maximum tokens of prompt + completion; the prompt is cut from the left first, completions never silently."""
    max_prompt_length: int = 0
    """Cut prompts (from the left) to at most this many tokens first; 0: no separate limit."""
    precompute_ref: bool = False
    """Compute reference log-probs once before training and cache them on disk (reused by later runs)."""
    ref_cache_dir: str = ""
    """Directory of the reference log-prob cache (default: $RLHFKIT_CACHE/ref_logps or ~/.cache/rlhfkit/ref_logps)."""
    packing: bool = True
    """Pack several pairs into one row where they fit (exact; off: one pair per row)."""
    learning_rate: float = 1e-6
    """Peak AdamW learning rate (DPO uses small ones; TRL's default is 1e-6)."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off by default: it runs arbitrary Python)."""

    @property
    def loss_types(self) -> list[LossType]:
        return [LossType(x) for x in self.loss]

    @property
    def needs_reference(self) -> bool:
        return any(t.needs_reference for t in self.loss_types)

    @property
    def unpaired(self) -> bool:
        return any(t.unpaired for t in self.loss_types)

    def validate(self) -> None:
        self.validate_common()
        if not self.model or not self.data:
            raise ValueError("model and data are required")
        valid = [t.value for t in LossType]
        bad = [x for x in self.loss if x not in valid]
        if bad or not self.loss:
            raise ValueError(f"loss: {bad or self.loss} not in {valid}")
        if self.loss_weights and len(self.loss_weights) != len(self.loss):
            raise ValueError(f"loss_weights: {len(self.loss_weights)} weights for {len(self.loss)} losses")
        if self.unpaired and len(self.loss) > 1:
            raise ValueError("loss: kto (unpaired) cannot be combined with other losses")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.length_alpha < 0 or (self.length_alpha and "sigmoid" not in self.loss):
            raise ValueError(f"length_alpha must be >= 0 and needs the sigmoid loss, got {self.length_alpha}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")


# ----------------------------------------------------------------------------------------------- reference
def load_reference(cfg: Config, tokenizer, policy: torch.nn.Module) -> torch.nn.Module:
    """The frozen reference model: ref_model, or the policy's initial weights: a copy, or under LoRA the policy
    itself, which `reference_logps` runs with its adapters off (models.reference_policy)."""
    return models.reference_policy(policy, cfg.ref_model, tokenizer, cfg.trust_remote_code)


def reference_logps(ref: torch.nn.Module, examples: list[Example], indices: list[int], pad_id: int, packing: bool,
                    device, autocast) -> torch.Tensor:
    """(2, len(indices)) reference log-probs of both completions on `device`, under inference_mode with the
    training layout. A LoRA policy serving as its own reference runs with its adapters off."""
    lay = make_layout([(examples[i].prompt, list(examples[i].completions)) for i in indices], pad_id, packing,
                      use_packed(ref, device))
    with torch.inference_mode(), autocast(), models.adapters_disabled(ref):
        out = run_layout(SequenceLogprobs(ref), lay, device)
    return out.float().view(2, len(indices))


def precompute_reference(cfg: Config, tokenizer, policy, examples: list[Example], data_stats: dict,
                         dist) -> torch.Tensor:
    """(2, n) reference log-probs for the whole dataset, from the on-disk cache or computed once and cached."""
    reference = cfg.ref_model or cfg.model
    key_fields = {
        "reference": refcache.hash_path(reference),
        "tokenizer": refcache.hash_path(cfg.tokenizer or cfg.model),
        "data": refcache.hash_path(cfg.data), "split": cfg.split, "rows": data_stats.get("rows"),
        "examples": len(examples), "column_map": cfg.column_map, "skip_invalid": cfg.skip_invalid,
        "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length, "precision": cfg.precision,
        "layout": f"kto-partners-seed{cfg.seed}" if cfg.unpaired else "paired",
    }
    if models.is_adapter_dir(reference):  # an adapter's log-probs depend on its base model's weights too
        key_fields["reference_base"] = refcache.hash_path(models.adapter_base(reference))
    key = refcache.cache_key(key_fields)
    cached = refcache.load(cfg.ref_cache_dir, key, len(examples))
    if cached is not None:
        print(f"dpo: reference log-probs from cache {refcache.path_for(cfg.ref_cache_dir, key)}")
        return torch.stack([cached["ref_a"], cached["ref_b"]])
    t0 = time.perf_counter()
    if dist.is_main:
        # no ref_model: the reference IS the policy before any update (under LoRA, adapters off); no copy
        ref = (load_reference(cfg, tokenizer, policy) if cfg.ref_model else policy.eval()).to(dist.device)
        autocast = lambda: autocast_for(cfg.precision, dist.device)  # noqa: E731
        out = torch.zeros(2, len(examples))
        step = max(1, cfg.micro_batch_size)
        for s in range(0, len(examples), step):
            idx = list(range(s, min(s + step, len(examples))))
            out[:, idx] = reference_logps(ref, examples, idx, tokenizer.pad_token_id, cfg.packing, dist.device,
                                          autocast).cpu()
        policy.train()
        del ref
        path = refcache.save(cfg.ref_cache_dir, key, {"ref_a": out[0], "ref_b": out[1]}, key_fields)
        print(f"dpo: reference log-probs computed in {time.perf_counter() - t0:.1f}s, cached at {path}")
    barrier()
    cached = refcache.load(cfg.ref_cache_dir, key, len(examples))
    return torch.stack([cached["ref_a"], cached["ref_b"]])


# ----------------------------------------------------------------------------------------------- one step
METRIC_KEYS = ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
               "logps/chosen", "logps/rejected", "kl/logratio_chosen", "kl/logratio_rejected", "kl/z0")


@dataclass
class StepContext:
    """What the step functions read; built once by `train`."""

    cfg: Config
    engine: Engine
    examples: list[Example]
    pad_id: int
    device: torch.device
    packed: bool  # micro-batches in the packed layout (`models.layout.use_packed`), else rows under block masks
    global_batch: int  # examples per optimiser step over all processes: every loss is a sum divided by it
    reuse_prompt_kv: bool  # KTO's z0 pass may continue the gradient forward's prompts from their keys and values
    ref_table: torch.Tensor | None  # (2, len(examples)) precomputed reference log-probs
    ref_model: torch.nn.Module | None  # or the reference on the fly

    def layout(self, items: list[tuple[list[int], list[list[int]]]]) -> Layout:
        return make_layout(items, self.pad_id, self.cfg.packing, self.packed)

    def reference(self, micro: list[int]) -> torch.Tensor | None:
        """(2, len(micro)) reference log-probs of both completions; None for reference-free losses."""
        if self.ref_table is not None:
            return self.ref_table[:, micro]
        if self.ref_model is not None:
            return reference_logps(self.ref_model, self.examples, micro, self.pad_id, self.cfg.packing, self.device,
                                   self.engine.autocast)
        return None

    def backward(self, losses: torch.Tensor, n: int, tokens: int) -> None:
        """Backpropagates a micro-batch's loss: a sum over examples / the global batch, as accumulation requires."""
        self.engine.backward(losses.sum() / self.global_batch)
        self.engine.count(samples=n, tokens=tokens)


class StepTotals:
    """Sums of a step's per-example values over the global batch, kept on the device and read once per step (a read
    is a host sync), and how many values each holds (known on the host)."""

    SUMS = ("loss", "rewards_chosen", "rewards_rejected", "accuracy", "logps_chosen", "logps_rejected",
            "logratio_chosen", "logratio_rejected")
    COUNTS = ("examples", "rewards_chosen", "rewards_rejected", "accuracy", "logps_chosen", "logps_rejected")

    def __init__(self, device: torch.device):
        self.device, self.counts = device, [0] * len(self.COUNTS)  # counts: known on the host
        self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64, device=device)

    def add(self, n_examples: int, losses: torch.Tensor, rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor,
            accuracy: torch.Tensor, logps_chosen: torch.Tensor, logps_rejected: torch.Tensor,
            ref_chosen: torch.Tensor | None, ref_rejected: torch.Tensor | None) -> None:
        """A micro-batch's losses, implicit rewards, 1.0 where those agree with the preference (or KTO label), and the
        policy's (detached) and reference's (None: reference-free) log-probs; "chosen" includes desirable examples."""
        with torch.no_grad():
            parts = [losses.detach().sum(), rewards_chosen.sum(), rewards_rejected.sum(), accuracy.sum(),
                     logps_chosen.sum(), logps_rejected.sum()]
            if ref_chosen is not None:  # k1 = log pi / pi_ref per sequence
                parts += [(logps_chosen - ref_chosen).sum(), (logps_rejected - ref_rejected).sum()]
            else:
                parts += [logps_chosen.new_zeros(())] * 2
            self.sums += torch.stack(parts).double()
        sizes = (n_examples, len(rewards_chosen), len(rewards_rejected), len(accuracy), len(logps_chosen),
                 len(logps_rejected))
        self.counts = [c + k for c, k in zip(self.counts, sizes)]

    def metrics(self, has_reference: bool, z0: torch.Tensor | None) -> dict[str, float]:
        """METRIC_KEYS, the same in every run: NaN where a quantity does not exist (no reference, not KTO)."""
        counts = torch.tensor(self.counts, dtype=torch.float64).to(self.device)
        values = all_reduce_sum(torch.cat([self.sums, counts])).tolist()
        sums, counts = dict(zip(self.SUMS, values)), dict(zip(self.COUNTS, values[len(self.SUMS):]))

        def mean(name: str, count: str = "", defined: bool = True) -> float:
            n = counts[count or name]
            return sums[name] / n if defined and n > 0 else float("nan")

        return {"train/loss": mean("loss", "examples"), "rewards/chosen": mean("rewards_chosen"),
                "rewards/rejected": mean("rewards_rejected"), "rewards/accuracy": mean("accuracy"),
                "rewards/margin": mean("rewards_chosen") - mean("rewards_rejected"),
                "logps/chosen": mean("logps_chosen"), "logps/rejected": mean("logps_rejected"),
                "kl/logratio_chosen": mean("logratio_chosen", "logps_chosen", has_reference),
                "kl/logratio_rejected": mean("logratio_rejected", "logps_rejected", has_reference),
                "kl/z0": z0.item() if z0 is not None else float("nan")}


def paired_step(ctx: StepContext, micros: list[list[int]], refs: list, totals: StepTotals) -> None:
    """Each micro-batch of pairs: one forward of [prompt | chosen | rejected], the paired losses (DPO / cDPO / R-DPO
    sigmoid, IPO, hinge, SimPO, ORPO, SFT; `losses.preference_loss`), the backward. Returns None (no z0)."""
    cfg, dev = ctx.cfg, ctx.device
    weights = cfg.loss_weights or [1.0] * len(cfg.loss)
    for m, r in zip(micros, refs):
        n = len(m)
        lay = ctx.layout([(ctx.examples[i].prompt, list(ctx.examples[i].completions)) for i in m])
        with ctx.engine.autocast():
            logps = run_layout(ctx.engine.model, lay, dev).float()  # (2n,): chosen [:n], rejected [n:]
        lengths = to_device(lay.lengths, dev).float()  # completion tokens: SimPO / ORPO averages, R-DPO
        pc, pr = logps[:n], logps[n:]
        lc, lr_ = (to_device(r[0], dev), to_device(r[1], dev)) if r is not None else (None, None)
        losses, cr, rj = preference_loss(
            cfg.loss_types, policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=lc,
            ref_rejected_logps=lr_, chosen_lengths=lengths[:n], rejected_lengths=lengths[n:], beta=cfg.beta,
            label_smoothing=cfg.label_smoothing, length_alpha=cfg.length_alpha, gamma=cfg.gamma, loss_weights=weights)
        ctx.backward(losses, n, lay.tokens)
        totals.add(n, losses, cr, rj, (cr > rj).float(), pc.detach(), pr.detach(), lc, lr_)


def kto_z0(ctx: StepContext, micros: list[list[int]], refs: list[torch.Tensor], saved_kv: dict | None = None,
           lay: Layout | None = None) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean log pi/pi_ref) on the mismatched (prompt, completion) pairs of the
    WHOLE global batch (Ethayarajh et al. 2024, sec. 4.1; TRL: per micro-batch), under no_grad and summed on the
    device. A micro-batch's pairs are a forward of their own or, given its gradient forward's `lay` and saved keys
    and values, continue that forward's prompts (`models.logps.continuation_logps`): no prompt forwarded twice."""
    kl_sum = torch.zeros(2, device=ctx.device)
    for m, r in zip(micros, refs):
        prompts, comps = [ctx.examples[i].prompt for i in m], [ctx.examples[i].completions[1] for i in m]
        with torch.no_grad(), ctx.engine.autocast():
            if saved_kv is None:
                pol = run_layout(ctx.engine.module, ctx.layout([(p, [c]) for p, c in zip(prompts, comps)]), ctx.device)
            else:
                pol = continuation_logps(ctx.engine.module.model, saved_kv, lay, prompts, comps)
        ctx.engine.count(tokens=sum(len(p) + len(c) for p, c in zip(prompts, comps)))  # the same either way
        kl_sum[0] += (pol.float() - to_device(r[1], ctx.device)).sum()
        kl_sum[1] += len(pol)
    kl_sum = all_reduce_sum(kl_sum)
    return kto_reference_point(kl_sum[0:1] / kl_sum[1], torch.zeros(1, device=ctx.device))


def kto_step(ctx: StepContext, micros: list[list[int]], refs: list[torch.Tensor], totals: StepTotals) -> torch.Tensor:
    """KTO: z0, then each micro-batch's forward of its examples' own completions (only they carry a gradient), the
    loss, the backward. A step of one micro-batch gets z0 after its forward, from the keys and values it saved.
    Returns z0."""
    cfg, dev = ctx.cfg, ctx.device
    from_saved_kv = ctx.reuse_prompt_kv and len(micros) == 1  # z0 is needed before the first micro-batch's loss
    z0 = None if from_saved_kv else kto_z0(ctx, micros, refs)
    for m, r in zip(micros, refs):
        lay = ctx.layout([(ctx.examples[i].prompt, [ctx.examples[i].completions[0]]) for i in m])
        saved_kv = {} if from_saved_kv else None
        with ctx.engine.autocast():
            logps = run_layout(ctx.engine.model, lay, dev, save_kv=saved_kv).float()  # (n,)
        if from_saved_kv:
            z0 = kto_z0(ctx, micros, refs, saved_kv, lay)
            saved_kv.clear()  # before the backward: not needed any more
        labels = [ctx.examples[i].label for i in m]
        pos = to_device(torch.tensor([k for k, l in enumerate(labels) if l], dtype=torch.long), dev)
        neg = to_device(torch.tensor([k for k, l in enumerate(labels) if not l], dtype=torch.long), dev)
        ref = to_device(r[0], dev)  # KTO always has a reference
        losses, cr, rj = preference_loss(
            cfg.loss_types, policy_chosen_logps=logps[pos], policy_rejected_logps=logps[neg],
            ref_chosen_logps=ref[pos], ref_rejected_logps=ref[neg], beta=cfg.beta, kto_kl=z0,
            desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
        ctx.backward(losses, len(m), lay.tokens)
        accuracy = torch.cat([(cr > 0).float(), (rj < 0).float()])  # the reward's sign agrees with the label
        totals.add(len(m), losses, cr, rj, accuracy, logps[pos].detach(), logps[neg].detach(), ref[pos], ref[neg])
    return z0


# ----------------------------------------------------------------------------------------------- training
def train(cfg: Config) -> Path:
    cfg.validate()  # the checks the CLI runs (config.resolve), for Python callers too
    seed_everything(cfg.seed)
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    # Data first, then its tokens (which checks it suits the loss), and only then the model: bad input fails fast.
    stats: dict = {}
    rows = data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid, stats=stats, expect=[
        data_lib.DataType.PREFERENCE, data_lib.DataType.IMPLICIT_PREFERENCE, data_lib.DataType.UNPAIRED])
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    truncation: dict = {}
    examples = tokenise(cfg, tokenizer, rows, truncation)
    models.check_quantization(cfg.load_in_4bit)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code, dtype="fp32",
                                  load_in_4bit=cfg.load_in_4bit)
    model = models.apply_lora(model, cfg, cfg.model)
    if dist.is_main:
        config_lib.save(cfg, out / "config.yaml")
        print(f"dpo: {len(examples)} {'unpaired examples' if cfg.unpaired else 'pairs'}; truncation counts "
              f"{truncation}")

    # The reference: cached log-probs (computed once, before any update), a frozen model, or nothing at all; both
    # before the Engine, as a resume loads later weights (under LoRA the reference is the policy, adapters off).
    precompute, on_the_fly = cfg.needs_reference and cfg.precompute_ref, cfg.needs_reference and not cfg.precompute_ref
    ref_table = precompute_reference(cfg, tokenizer, model, examples, stats, dist) if precompute else None
    ref_model = load_reference(cfg, tokenizer, model).to(dist.device) if on_the_fly else None

    global_batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps * dist.world_size
    sampler = StepSampler(len(examples), global_batch, cfg.seed)
    model.train()
    engine = Engine(cfg, SequenceLogprobs(model), total_steps(cfg, sampler.steps_per_epoch), name="dpo",
                    dist_info=dist, frozen=[ref_model])
    packed = use_packed(model, dist.device)
    # KTO's z0 pass may read the gradient forward's prompt keys and values back (padding-free, the CPU's row layout)
    reuse_prompt_kv = cfg.unpaired and not packed and padding_free(backbone(model))
    ctx = StepContext(cfg, engine, examples, tokenizer.pad_token_id, dist.device, packed, global_batch,
                      reuse_prompt_kv, ref_table, ref_model)

    t0 = time.perf_counter()
    for step in engine.remaining_steps():
        # 1. batch: the step's global batch, and this process's micro-batches of it
        idx = sampler.indices(step)
        micros = engine.my_micro_batches(idx)
        # 2. reference log-probs of both completions, (2, b) per micro-batch (None for reference-free losses)
        refs = [ctx.reference(m) for m in micros]
        # 3. policy log-probs, loss and backward per micro-batch (KTO: its reference point z0 first)
        totals = StepTotals(dist.device)
        z0 = kto_step(ctx, micros, refs, totals) if cfg.unpaired else paired_step(ctx, micros, refs, totals)
        # 4. optimiser step, and the step's metrics over the global batch
        engine.step(totals.metrics(cfg.needs_reference, z0), batch_info=f"indices {idx}")
    engine.close()

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    if dist.is_main:
        print(f"dpo: peak memory {peak_mib:.0f} MiB ({'CUDA allocated' if torch.cuda.is_available() else 'RSS'})")
        models.save(model, tokenizer, out, merge=cfg.merge, metadata={
            "stage": "dpo", "loss": cfg.loss, "steps": engine.step_count, "skipped_steps": engine.skipped_steps,
            "truncation": truncation, "peak_memory_mib": round(peak_mib, 1),
            "train_seconds": time.perf_counter() - t0})
    return out
