"""`rlhfkit dpo`: direct preference optimisation and its family, one trainer for every preference loss.

    from rlhfkit import dpo
    dpo.train(dpo.Config(model="runs/sft", data="prefs.jsonl", loss=["sigmoid"], beta=0.1, output_dir="runs/dpo"))
    rlhfkit dpo --model runs/sft --data prefs.jsonl --loss sigmoid,sft --loss-weights 1.0,0.2

The loss is a list of `losses.LossType` members (sigmoid = DPO / cDPO, ipo, hinge, simpo, orpo, kto, sft), combined
with `loss_weights`; the loop asks each member what it needs (reference log-probs? per-token averages?) and
never branches on names. The math lives in losses.py; this file turns data into sequence log-probs, fast:

  * One forward per pair: the prompt is encoded ONCE and chosen and rejected both attend to it, in one row
    [prompt | chosen | rejected] with a 4-D mask (prompt causal; each completion sees the prompt and its own past,
    never the other completion) and position ids that restart after the prompt. This is exactly the computation
    of two separate rows (tests/test_dpo.py checks it against the padded two-row path), with 2P+C+R tokens
    becoming P+C+R.
  * Packing: pairs of a micro-batch share rows (first-fit decreasing, row capacity = the longest pair), so rows
    are full where lengths differ, and no row is longer than the padded layout's (attention stays per-row
    quadratic, never over the whole micro-batch).
  * The LM head runs only at completion positions (N x V logits, not B x T x V).
  * Reference log-probs: precomputed once and cached on disk (refcache.py), or on the fly under inference_mode
    with the same layout. Reference-free losses (simpo, orpo, sft) never load a reference model. Under LoRA
    (`--lora-r`) the on-the-fly reference is the policy itself with its adapters off: no second model in memory.
KTO (Ethayarajh et al. 2024) trains on unpaired rows (prompt, completion, label); paired rows are unpaired (each
pair -> one desirable + one undesirable example, as TRL's unpair_preference_dataset). Its reference point z0 is
estimated on mismatched (prompt, completion) pairs under no_grad over the whole global batch (see docs/dpo.md).
When a step is one micro-batch, that pass continues the gradient forward's prompts from the keys and values it
saved (`models.logps.continuation_logps`), so each prompt is forwarded once per step by the policy, not twice.
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
from rlhfkit.engine import refcache
from rlhfkit.engine import (
    Engine, StepSampler, TrainConfig, all_reduce_sum, barrier, seed_everything, setup_distributed, total_steps,
)
from rlhfkit.math.losses import LossType, kto_reference_point, preference_loss
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


# ----------------------------------------------------------------------------------------------- examples
@dataclass
class Example:
    """A prompt and the completions that attend to it: (chosen, rejected) for pairs, (completion, mismatched
    completion for KTO's reference point) for unpaired data. `label`: KTO's desirable flag (None for pairs)."""

    prompt: list[int]
    completions: tuple[list[int], list[int]]
    label: bool | None = None


def fit(prompt: list[int], completions: list[list[int]], max_length: int, max_prompt_length: int,
        counter: dict) -> tuple[list[int], list[list[int]]]:
    """One prompt cut for all completions (they share it), so each prompt + completion fits max_length: the prompt
    is cut from the LEFT first, a completion from the right only if it alone is too long. Every cut is counted."""
    longest = max(completions, key=len)
    p, _ = data_lib.truncate_pair(prompt, longest, max_length, max_prompt_length)
    if len(p) < len(prompt):
        data_lib._count(counter, "prompt_truncated")
    room = max_length - len(p)
    out = []
    for c in completions:
        if len(c) > room:
            c = c[:room]
            data_lib._count(counter, "completion_truncated")
        out.append(c)
    return p, out


def unpair(rows: list[dict]) -> list[dict]:
    """Preference rows -> unpaired rows: each pair gives (prompt, chosen, True) and (prompt, rejected, False),
    as TRL's unpair_preference_dataset (interleaved here; order is irrelevant after shuffling)."""
    out = []
    for row in rows:
        prompt, chosen, rejected = data_lib.preference_parts(row)
        out += [{"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False}]
    return out


def mismatched_partners(n: int, seed: int) -> list[int]:
    """A fixed derangement: example i borrows the completion of partner[i] != i for KTO's reference point. Fixed
    per dataset (not per batch, as TRL) so the reference log-probs of the mismatched pairs can be cached."""
    if n < 2:
        raise ValueError("kto needs at least 2 examples")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = order[(k + 1) % n]
    return partner


def tokenise(cfg: Config, tokenizer, rows: list[dict], counter: dict) -> list[Example]:
    examples = []
    if cfg.unpaired:
        if "chosen" in rows[0]:
            rows = unpair(rows)
        comps = [data_lib.encode_completion(tokenizer, r["prompt"], r["completion"]) for r in rows]
        partner = mismatched_partners(len(rows), cfg.seed)
        for i, r in enumerate(rows):
            p, cs = fit(data_lib.encode_prompt(tokenizer, r["prompt"]), [comps[i], comps[partner[i]]],
                        cfg.max_length, cfg.max_prompt_length, counter)
            examples.append(Example(p or [tokenizer.eos_token_id], (cs[0], cs[1]), bool(r["label"])))
        return examples
    if "chosen" not in rows[0]:
        raise data_lib.DataError(f"{cfg.data}: loss {cfg.loss} needs paired preference rows (prompt, chosen, "
                                 "rejected); unpaired rows (prompt, completion, label) train with loss kto")
    for r in rows:
        prompt, chosen, rejected = data_lib.preference_parts(r)
        p, cs = fit(data_lib.encode_prompt(tokenizer, prompt), [data_lib.encode_completion(tokenizer, prompt, chosen),
                    data_lib.encode_completion(tokenizer, prompt, rejected)], cfg.max_length, cfg.max_prompt_length,
                    counter)
        examples.append(Example(p or [tokenizer.eos_token_id], (cs[0], cs[1])))
    return examples


# ----------------------------------------------------------------------------------------------- reference
def autocast_for(precision: str, device: torch.device):
    """The Engine's autocast, for work done before the Engine exists (reference precomputation)."""
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def load_reference(cfg: Config, tokenizer, policy: torch.nn.Module) -> torch.nn.Module:
    """The frozen reference model: ref_model, or the policy's initial weights: a copy, or under LoRA the policy
    itself, which `reference_logps` runs with its adapters off (models.reference_policy). (Tests monkeypatch this
    to prove that reference-free losses never get here.)"""
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
        # With no ref_model the reference IS the policy before any update (under LoRA: with its adapters off):
        # use it directly, no copy in memory.
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


# ----------------------------------------------------------------------------------------------- training
METRIC_KEYS = ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
               "logps/chosen", "logps/rejected", "kl/logratio_chosen", "kl/logratio_rejected", "kl/z0")


def train(cfg: Config) -> Path:
    seed_everything(cfg.seed)
    dist = setup_distributed()
    out = Path(cfg.output_dir)
    # Data first, then its tokens (which checks it suits the loss), and only then the model: bad input fails fast.
    stats: dict = {}
    expect = [data_lib.DataType.PREFERENCE, data_lib.DataType.IMPLICIT_PREFERENCE, data_lib.DataType.UNPAIRED]
    rows = data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid, expect=expect, stats=stats)
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    counter: dict = {}
    examples = tokenise(cfg, tokenizer, rows, counter)
    models.check_quantization(cfg.load_in_4bit)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code, dtype="fp32",
                                  load_in_4bit=cfg.load_in_4bit)
    model = models.apply_lora(model, cfg, cfg.model)
    if dist.is_main:
        config_lib.save(cfg, out / "config.yaml")
        print(f"dpo: {len(examples)} {'unpaired examples' if cfg.unpaired else 'pairs'}; truncation counts {counter}")
    types, weights = cfg.loss_types, cfg.loss_weights or [1.0] * len(cfg.loss)
    pad = tokenizer.pad_token_id

    # 1. the reference: cached log-probs (computed once, before any update), a frozen model, or nothing at all
    ref_table, ref = None, None
    if cfg.needs_reference:
        if cfg.precompute_ref:
            ref_table = precompute_reference(cfg, tokenizer, model, examples, stats, dist)
        else:
            # before Engine: a resume loads later weights (under LoRA the reference is the policy, adapters off)
            ref = load_reference(cfg, tokenizer, model).to(dist.device)

    global_batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps * dist.world_size
    sampler = StepSampler(len(examples), global_batch, cfg.seed)
    n_steps = total_steps(cfg, sampler.steps_per_epoch)
    model.train()
    engine = Engine(cfg, SequenceLogprobs(model), n_steps, name="dpo", dist_info=dist)
    dev = dist.device

    def ref_for(micro: list[int]) -> torch.Tensor | None:
        if ref_table is not None:
            return ref_table[:, micro]
        if ref is not None:
            return reference_logps(ref, examples, micro, pad, cfg.packing, dev, engine.autocast)
        return None

    has_ref = cfg.needs_reference
    packed = use_packed(model, dev)
    # KTO's z0 pass may read the gradient forward's prompt keys and values back (the step must be one micro-batch:
    # z0 is needed before the first micro-batch's loss) on a padding-free model family in the CPU's row layout.
    reuse_prompt_kv = cfg.unpaired and not packed and padding_free(backbone(model))

    def layout(items: list[tuple[list[int], list[list[int]]]]) -> Layout:
        return make_layout(items, pad, cfg.packing, packed)

    def mismatched(m: list[int]) -> tuple[list[list[int]], list[list[int]]]:
        return [examples[i].prompt for i in m], [examples[i].completions[1] for i in m]

    def mismatched_logps(m: list[int]) -> torch.Tensor:  # a forward of its own: prompts and mismatched completions
        lay = layout([(p, [c]) for p, c in zip(*mismatched(m))])
        with torch.no_grad(), engine.autocast():
            out = run_layout(engine.module, lay, dev)
        engine.count(tokens=lay.tokens)
        return out

    def kto_z0(policy_logps: list[torch.Tensor], refs: list[torch.Tensor]) -> torch.Tensor:
        kl_sum = torch.zeros(2, device=dev)  # on the device: no host sync inside the step
        for pol, r in zip(policy_logps, refs):
            kl_sum[0] += (pol.float() - to_device(r[1], dev)).sum()
            kl_sum[1] += len(pol)
        kl_sum = all_reduce_sum(kl_sum)
        return kto_reference_point(kl_sum[0:1] / kl_sum[1], torch.zeros(1, device=dev))

    # Metric sums over the global batch, kept on the device and read once per step (a read is a host sync).
    SUMS = ("loss", "r_c", "r_r", "acc", "lp_c", "lp_r", "kl_c", "kl_r")
    t0 = time.perf_counter()
    for step in engine.remaining_steps():
        idx = sampler.indices(step)
        micros = engine.my_micro_batches(idx)
        refs = [ref_for(m) for m in micros]  # (2, b) each, or None

        # 2. KTO's reference point z0 = max(0, E[log pi/pi_ref]) on mismatched (prompt, completion) pairs
        #    (Ethayarajh et al. 2024, sec. 4.1), under no_grad and over the WHOLE global batch, so gradient
        #    accumulation and process count do not change it (TRL estimates it per micro-batch). With one
        #    micro-batch it is computed after the gradient forward, from the keys and values that forward saved.
        z0, saved_kv = None, None
        if cfg.unpaired:
            if reuse_prompt_kv and len(micros) == 1:
                saved_kv = {}
            else:
                z0 = kto_z0([mismatched_logps(m) for m in micros], refs)

        # 3. forward/backward per micro-batch; the loss is a sum over examples divided by the global batch size
        sums = torch.zeros(len(SUMS), dtype=torch.float64, device=dev)
        counts = dict.fromkeys(("n", "r_c", "r_r", "acc", "lp_c", "lp_r"), 0)  # known on the host
        for m, r in zip(micros, refs):
            n = len(m)
            if cfg.unpaired:  # only the real completion carries a gradient
                lay = layout([(examples[i].prompt, [examples[i].completions[0]]) for i in m])
            else:
                lay = layout([(examples[i].prompt, list(examples[i].completions)) for i in m])
            with engine.autocast():
                logps = run_layout(engine.model, lay, dev, save_kv=saved_kv).float()  # (n_seqs,)
            if saved_kv is not None:
                prompts, comps = mismatched(m)
                with torch.no_grad(), engine.autocast():
                    z0 = kto_z0([continuation_logps(engine.module.model, saved_kv, lay, prompts, comps)], refs)
                # counted as the separate pass counts them (prompt + completion), so tokens/s stays comparable
                engine.count(tokens=sum(len(p) + len(c) for p, c in zip(prompts, comps)))
                saved_kv.clear()
            lengths = to_device(lay.lengths, dev).float()
            if cfg.unpaired:
                labels = [examples[i].label for i in m]
                pos = to_device(torch.tensor([k for k, l in enumerate(labels) if l], dtype=torch.long), dev)
                neg = to_device(torch.tensor([k for k, l in enumerate(labels) if not l], dtype=torch.long), dev)
                rr = to_device(r[0], dev) if r is not None else None
                losses, cr, rj = preference_loss(
                    types, policy_chosen_logps=logps[pos], policy_rejected_logps=logps[neg],
                    ref_chosen_logps=rr[pos], ref_rejected_logps=rr[neg], beta=cfg.beta, kto_kl=z0,
                    desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
                pc, pr = logps[pos].detach(), logps[neg].detach()
                lc, lr_ = (rr[pos], rr[neg])
                acc = torch.cat([(cr > 0).float(), (rj < 0).float()])  # reward sign agrees with the label
                n_c, n_r = len(pos), len(neg)
            else:
                pc, pr = logps[:n], logps[n:]
                lc, lr_ = (to_device(r[0], dev), to_device(r[1], dev)) if r is not None else (None, None)
                losses, cr, rj = preference_loss(
                    types, policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=lc,
                    ref_rejected_logps=lr_, chosen_lengths=lengths[:n], rejected_lengths=lengths[n:], beta=cfg.beta,
                    label_smoothing=cfg.label_smoothing, length_alpha=cfg.length_alpha, gamma=cfg.gamma,
                    loss_weights=weights)
                pc, pr = pc.detach(), pr.detach()
                acc = (cr > rj).float()
                n_c = n_r = n
            engine.backward(losses.sum() / global_batch)
            engine.count(samples=n, tokens=lay.tokens)
            with torch.no_grad():
                parts = [losses.detach().sum(), cr.sum(), rj.sum(), acc.sum(), pc.sum(), pr.sum()]
                parts += [(pc - lc).sum(), (pr - lr_).sum()] if lc is not None else [pc.new_zeros(())] * 2
                sums += torch.stack(parts).double()
            for key, k in (("n", n), ("r_c", len(cr)), ("r_r", len(rj)), ("acc", len(acc)), ("lp_c", n_c),
                           ("lp_r", n_r)):
                counts[key] += k

        # 4. update and log (the same keys in every run; NaN where a quantity does not exist, e.g. no reference)
        sums = torch.cat([sums, torch.tensor(list(counts.values()), dtype=torch.float64).to(dev)])
        tot = dict(zip(SUMS + tuple(k + "#" for k in counts), all_reduce_sum(sums).tolist()))
        def mean(key: str, count: str, defined: bool = True) -> float:
            return tot[key] / tot[count] if defined and tot[count] > 0 else float("nan")

        metrics = {
            "train/loss": mean("loss", "n#"), "rewards/chosen": mean("r_c", "r_c#"),
            "rewards/rejected": mean("r_r", "r_r#"), "rewards/margin": mean("r_c", "r_c#") - mean("r_r", "r_r#"),
            "rewards/accuracy": mean("acc", "acc#"), "logps/chosen": mean("lp_c", "lp_c#"),
            "logps/rejected": mean("lp_r", "lp_r#"), "kl/logratio_chosen": mean("kl_c", "lp_c#", has_ref),
            "kl/logratio_rejected": mean("kl_r", "lp_r#", has_ref),
            "kl/z0": z0.item() if z0 is not None else float("nan"),
        }
        engine.step(metrics, batch_info=f"indices {idx}")
    engine.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    if dist.is_main:
        print(f"dpo: peak memory {peak_mib:.0f} MiB ({'CUDA allocated' if torch.cuda.is_available() else 'RSS'})")
        models.save(model, tokenizer, out, merge=cfg.merge, metadata={
            "stage": "dpo", "loss": cfg.loss, "steps": engine.step_count, "skipped_steps": engine.skipped_steps,
            "truncation": counter, "peak_memory_mib": round(peak_mib, 1), "train_seconds": time.perf_counter() - t0})
    return out
