"""The training engine shared by every trainer: distribution, optimisation, safety, logging, checkpoints.

Composition, not a framework: a trainer owns its loop and calls the engine for the parts that are the same
everywhere. A step looks like this in every trainer:

    engine = Engine(cfg, model, total_steps=...)          # DDP wrap, AdamW, schedule, resume
    for step in engine.remaining_steps():                   # starts after the resumed step
        for micro in engine.my_micro_batches(step_indices):     # this rank's share of the global batch
            loss = loss_sum(micro) / global_denominator     # normalised over the WHOLE global batch
            engine.backward(loss)
        engine.step(metrics)                                # NaN guard, clip, optimizer, log, checkpoint

Batch semantics (the most common confusion in RLHF frameworks, so it is explicit and checked):
    global_batch_size = micro_batch_size x gradient_accumulation_steps x world_size
Worked example: 2 processes, micro_batch_size 4, gradient_accumulation_steps 2 -> 16 examples per optimizer
step; each process runs 2 forward/backward passes of 4 examples. An inexact division is an error.

Losses are normalised by a denominator of the global batch (examples or tokens), so 2 processes x 1 micro-batch
and 1 process x 2 accumulated micro-batches produce the same gradient (DDP averages over ranks, so backward()
multiplies by world_size to turn that average back into a sum).

Beside this file: `distributed` (the torchrun process group), `logs` (metrics.jsonl, TensorBoard / wandb, the
progress bar), `checkpoint` (crash-safe checkpoints). Throughput counting is not the engine's: `rlhfkit bench`
watches the engines a trainer builds through `observed` (tools/bench.py `Throughput`, which writes timing.json).
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rlhfkit.engine import checkpoint, sharding
from rlhfkit.engine.distributed import (  # noqa: F401  (the engine's front door: trainers import these from here)
    Dist, _leave_process_group, all_reduce_sum, barrier, setup_distributed,
)
from rlhfkit.engine.logs import MetricsLog, progress_bar, progress_info, read_metrics  # noqa: F401


@dataclass
class TrainConfig:
    """Settings every trainer shares. Trainer configs extend this dataclass."""

    output_dir: str = "runs/run"
    """Run directory: resolved config, metrics.jsonl, checkpoints/ and the final model are written here."""
    seed: int = 42
    """Seed for data order, initialisation and sampling: the same seed gives the same numbers."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (reached after warm-up)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norm weights)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler: str = "cosine"
    """Learning-rate decay after warm-up: cosine, linear or constant."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to the peak learning rate."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak (cosine/linear)."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means num_epochs passes over the data."""
    num_epochs: float = 1.0
    """Passes over the data when max_steps is 0 (may be fractional)."""
    micro_batch_size: int = 8
    """Examples per forward/backward pass on one process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimizer step on each process."""
    global_batch_size: int = 0
    """Examples per optimizer step over all processes; 0 derives it. If set, it must equal micro_batch_size x
    gradient_accumulation_steps x world_size exactly."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm); 0 disables clipping."""
    precision: str = "fp32"
    """fp32, bf16 (autocast) or fp16 (autocast + loss scaling, CUDA only)."""
    log_every: int = 1
    """Log metrics every N optimizer steps."""
    save_every: int = 0
    """Write a resumable checkpoint every N optimizer steps (0: one checkpoint, at the end of the run)."""
    keep_checkpoints: int = 2
    """Complete checkpoints to keep (the newest ones; the only complete one is never deleted)."""
    resume: bool = False
    """Resume from the newest complete checkpoint in output_dir (model, optimizer, scheduler, RNG, data position)."""
    max_nonfinite_steps: int = 3
    """Abort after this many consecutive steps with a non-finite loss or gradient norm (each one is skipped)."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    weights_dtype: str = "fp32"
    """fp32, or bf16: the model's weights are held in bf16 while training (forward, backward and gradients in bf16:
    half the memory of fp32 weights and gradients, no per-step casts under autocast), and AdamW updates fp32 master
    copies, its state in fp32 too, so updates smaller than bf16's resolution still add up (Micikevicius et al.
    2018). Needs precision bf16; the saved model is bf16."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations during the backward pass instead of keeping them: activation
    memory of one layer instead of all, for about a third more compute per step."""
    lora_r: int = 0
    """LoRA rank (Hu et al. 2021): train a rank-r update B A beside each target weight, which stays frozen; 0 trains
    every weight (full fine-tuning). Memory for gradients and AdamW state shrinks to the adapters', and a reference
    policy is the same model with its adapters off (no second copy)."""
    lora_alpha: float = 16.0
    """LoRA scale: the update is (lora_alpha / lora_r) B A x (Hu et al. 2021, sec. 4.1)."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input during training. Online trainers (ppo, grpo, rloo) need 0: their sampled and
    scored log-probs must come from one distribution."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters, by name (e.g. q_proj,v_proj); all-linear: every linear layer of the model except
    its output layer (peft's all-linear)."""
    load_in_4bit: bool = False
    """QLoRA (Dettmers et al. 2023): load the frozen weights of the trained model in 4-bit NF4 (bitsandbytes) and
    train LoRA adapters on top; needs lora_r > 0, CUDA and the bitsandbytes package."""
    merge: bool = False
    """With lora_r > 0: also fold the adapters into the weights and write that full model to output_dir (plain
    transformers), the adapter going to output_dir/adapter. Off: output_dir is the adapter directory."""
    fsdp: bool = False
    """Under torchrun, shard with FSDP2 instead of DDP: each decoder layer's weights, gradients and AdamW state are
    split over the processes (the embeddings and heads stay replicated), a frozen reference is sharded too, and
    checkpoints are sharded (torch.distributed.checkpoint); the final model is gathered into one safetensors file.
    One process: no effect (docs/sharding.md)."""
    progress: bool = True
    """Show a progress bar with ETA and key metrics."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package) under output_dir/tb."""
    wandb_project: str = ""
    """Also log to this Weights & Biases project (credentials only from the environment)."""

    def validate_common(self) -> None:
        if self.lr_scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_scheduler: {self.lr_scheduler!r} is not one of cosine, linear, constant")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: {self.precision!r} is not one of fp32, bf16, fp16")
        if self.weights_dtype not in ("fp32", "bf16") or (self.weights_dtype == "bf16" and self.precision != "bf16"):
            raise ValueError(f"weights_dtype: {self.weights_dtype!r} must be fp32, or bf16 with precision bf16")
        for name in ("micro_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.num_epochs <= 0 and self.max_steps == 0:
            raise ValueError("max_steps must be >= 0 and num_epochs > 0 when max_steps is 0")
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_r must be >= 0, lora_alpha > 0 and lora_dropout in [0, 1), got {self.lora_r}, "
                             f"{self.lora_alpha}, {self.lora_dropout}")
        if self.lora_r and not self.lora_target_modules:
            raise ValueError("lora_target_modules: name at least one module (or all-linear)")
        for name in ("load_in_4bit", "merge"):
            if getattr(self, name) and not self.lora_r:
                raise ValueError(f"{name} needs LoRA: set lora_r > 0")
        if self.fsdp and (self.weights_dtype != "fp32" or self.precision == "fp16" or self.load_in_4bit):
            raise ValueError("fsdp: keeps fp32 shards and computes in bf16 through FSDP2's mixed precision with "
                             "--precision bf16; it does not combine with weights_dtype bf16, fp16 or load_in_4bit")

    def validate(self) -> None:
        self.validate_common()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_batch(cfg: TrainConfig, world_size: int) -> int:
    """Global batch size; raises if the three batch settings do not multiply exactly."""
    derived = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size
    if cfg.global_batch_size and cfg.global_batch_size != derived:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} != micro_batch_size {cfg.micro_batch_size} x "
            f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} x world_size {world_size} = {derived}; "
            "set gradient_accumulation_steps so the product is exact"
        )
    return derived


# ----------------------------------------------------------------------------------------------- data order
class StepSampler:
    """Deterministic global batches: step s -> example indices, from (seed, epoch) alone.

    Resuming needs nothing but the step number, and every process computes the same global batch, then takes
    its own share, so the data position survives a crash and a change of process count.
    """

    def __init__(self, n_examples: int, global_batch: int, seed: int, shuffle: bool = True):
        if n_examples < global_batch:
            raise ValueError(f"dataset has {n_examples} examples, fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.seed, self.shuffle = n_examples, global_batch, seed, shuffle
        self.steps_per_epoch = n_examples // global_batch  # the ragged tail is left out of each epoch, counted
        self._cache: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.n, generator=g)
            else:
                order = torch.arange(self.n)
            self._cache = (epoch, order)
        return self._cache[1]

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        return self._order(epoch)[k * self.global_batch : (k + 1) * self.global_batch].tolist()


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_epochs * steps_per_epoch))


# ----------------------------------------------------------------------------------------------- optimisation
def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    params: list[torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters, or over `params` (fp32 master copies of them)."""
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    kinds = {type(p).__name__ == "DTensor" for p in params}  # FSDP's shards apart: a fused kernel takes one kind
    groups = []
    for sharded in sorted(kinds) or [False]:
        decay, no_decay = [], []
        for p in (p for p in params if (type(p).__name__ == "DTensor") == sharded):
            (no_decay if p.ndim < 2 else decay).append(p)  # no decay on biases and norm weights
        groups += [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) updates all parameters in one pass instead of ~10 elementwise ops per
    # tensor; on the 5 M parameter benchmark model the per-tensor loop was a fifth of an SFT step.
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, fused=True
    )


def bf16_with_master(module: torch.nn.Module) -> list[torch.Tensor]:
    """Casts `module`'s floating-point parameters to bf16 in place and returns fp32 copies of the trainable ones,
    in `parameters()` order: the master weights the optimizer updates. Buffers (rotary frequencies) keep their
    dtype."""
    master = []
    for p in module.parameters():
        if p.is_floating_point():
            if p.requires_grad:
                master.append(p.detach().float().clone())
            p.data = p.data.to(torch.bfloat16)
    return master


def lr_lambda(cfg: TrainConfig, total: int):
    """Warm-up then cosine/linear decay to min_lr_ratio, as a multiplier of the peak learning rate."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_scheduler == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return f


def enable_gradient_checkpointing(module: torch.nn.Module) -> int:
    """transformers' per-layer activation checkpointing on every Hugging Face model inside `module` (the policy, a
    critic, a reward model), non-reentrant so keyword arguments and frozen inputs pass through. Returns how many."""
    from transformers import PreTrainedModel

    n = 0
    for m in module.modules():
        on = getattr(m, "is_activation_checkpointing", None)  # its name from transformers 5.2x on
        if on is None:
            on = getattr(m, "is_gradient_checkpointing", False)
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing and not on:
            kwargs = {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):  # its name from transformers 5.2x on
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            n += 1
    if not n:
        raise ValueError("gradient_checkpointing: no Hugging Face model here supports it")
    return n


class NonFiniteError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------- observers
_OBSERVERS: list[Callable[[Engine], Any]] = []


@contextlib.contextmanager
def observed(make: Callable[[Engine], Any]):
    """Within the block, every Engine built is watched by `make(engine)`: an object with start(now),
    count(samples, tokens, gen_tokens, gen_s), step(seconds, metrics), end(now) and close(). So a benchmark counts a
    trainer's work (tools/bench.py `Throughput`) while the trainer and the engine know nothing of benchmarks."""
    _OBSERVERS.append(make)
    try:
        yield
    finally:
        _OBSERVERS.remove(make)


# ----------------------------------------------------------------------------------------------- the engine
class Engine:
    """Holds the model (DDP-wrapped when distributed), optimizer, scheduler, checkpoints and logs for one run."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        total_steps: int,
        name: str = "train",
        dist_info: Dist | None = None,
        extra_state: dict[str, Any] | None = None,
        frozen: list[torch.nn.Module | None] = (),
    ):
        """`frozen`: models the trainer runs without training (a separate reference), sharded with --fsdp."""
        self.cfg = cfg
        self.dist = dist_info or setup_distributed()
        self.run_dir = Path(cfg.output_dir)
        self.total_steps = total_steps
        self.name = name
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.global_batch = resolve_batch(cfg, self.dist.world_size)
        # a 4-bit (QLoRA) model is placed on its device when loaded and refuses .to() in some bitsandbytes versions
        quantized = any(getattr(m, "is_loaded_in_4bit", False) for m in model.modules())
        self.model = model if quantized else model.to(self.dist.device)
        self.module = self.model  # the unwrapped model, for saving and generation
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.module)
        # bf16 weights: cast before DDP sees the parameters (its buckets take their dtype)
        self.master = bf16_with_master(self.module) if cfg.weights_dtype == "bf16" else None
        self.layers: list[torch.nn.Module] = []  # FSDP units (--fsdp under torchrun), else empty
        if cfg.fsdp and self.dist.world_size > 1:
            self.layers = sharding.shard(self.module, self.dist.device, cfg.precision)
            for m in frozen:
                if m is not None and m is not self.module and not any(m is x for x in self.module.modules()):
                    sharding.shard_frozen(m, self.dist.device, cfg.precision)
        elif self.dist.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.module, cfg, self.master)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and self.dist.device.type == "cuda" else None
        self.step_count = 0
        self.nonfinite_run = 0
        self.skipped_steps = 0
        self._micro_losses_finite = True
        self._micro_index = 0
        self.extra_state = extra_state if extra_state is not None else {}
        self.resumed_from: Path | None = None
        if cfg.resume:
            self._resume()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.run_dir, cfg, self.dist.is_main, resume_step=self.step_count if cfg.resume else -1)
        self._progress = None
        self._task = None
        self._t_last = time.perf_counter()
        self.observers = [make(self) for make in _OBSERVERS]

    # -- data
    def my_micro_batches(self, global_indices: list[int]) -> list[list[int]]:
        """This process's micro-batches of a global batch: rank r takes micro-batches r*A .. r*A+A-1."""
        mb, acc = self.cfg.micro_batch_size, self.cfg.gradient_accumulation_steps
        start = self.dist.rank * mb * acc
        mine = global_indices[start : start + mb * acc]
        return [mine[i : i + mb] for i in range(0, len(mine), mb)]

    def remaining_steps(self) -> Iterator[int]:
        """Steps still to run (after a resume, the next one), with a progress bar on the main process."""
        show = self.cfg.progress and self.dist.is_main
        start = self.step_count
        with progress_bar(show) as progress:
            self._progress = progress
            if progress is not None:
                self._task = progress.add_task(self.name, total=self.total_steps, completed=self.step_count, info="")
            self._t_last = time.perf_counter()
            for o in self.observers:
                o.start(self._t_last)
            while self.step_count < self.total_steps:
                yield self.step_count
        self._progress = None
        end = time.perf_counter()  # the loop's wall time ends here, before the final checkpoint
        for o in self.observers:
            o.end(end)
        if self.cfg.save_every == 0 and self.step_count > start:
            # save_every 0 is one checkpoint, at the end: --resume then finds the run finished (or extends it with a
            # larger max_steps) instead of finding no checkpoint. Reached only when the loop ran to the end.
            self.save_checkpoint()

    # -- numerics
    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor, last: bool | None = None) -> None:
        """Backpropagate a loss already normalised by a global-batch denominator.

        DDP averages gradients over ranks; multiplying by world_size turns that average back into the sum the
        global normalisation expects. Gradient sync happens only on the last micro-batch of the step.
        """
        # kept on the device and read once in step(): reading it here would make the host wait for the forward
        self._micro_losses_finite = self._micro_losses_finite & torch.isfinite(loss.detach()).all()
        self._micro_index += 1
        if last is None:
            last = self._micro_index >= self.cfg.gradient_accumulation_steps
        scaled = loss * self.dist.world_size
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        sync = contextlib.nullcontext()
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) and not last:
            sync = self.model.no_sync()
        if self.layers:  # FSDP: reduce-scatter only after the last micro-batch
            self.model.set_requires_gradient_sync(last)
        with sync:
            scaled.backward()

    def step(self, metrics: dict[str, Any] | None = None, batch_info: str = "") -> bool:
        """Clip, guard, update, schedule, log and maybe checkpoint. Returns False if the step was skipped."""
        cfg = self.cfg
        self._micro_index = 0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.master is not None:  # the update happens on the fp32 masters, from the bf16 gradients
            for p, m in zip(params, self.master):
                m.grad = None if p.grad is None else p.grad.float()
            model_params, params = params, self.master
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        if self.layers:
            sharding.average_replicated_grads(params)
            grad_norm = sharding.clip_grad_norm(params, max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        ok = torch.as_tensor(self._micro_losses_finite, device=grad_norm.device) & torch.isfinite(grad_norm)
        flag = (~ok).float().reshape(1)
        finite = all_reduce_sum(flag).item() == 0  # every rank skips together, or none does
        self._micro_losses_finite = True
        metrics = dict(metrics or {})
        abort = False
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.master is not None:
                with torch.no_grad():
                    torch._foreach_copy_(model_params, self.master)  # rounded to bf16 for the next forward
            self.nonfinite_run = 0
        else:
            # Skip the update entirely (PITFALLS: one NaN batch must not poison the weights) and say so.
            self.skipped_steps += 1
            self.nonfinite_run += 1
            metrics["train/skipped_nonfinite"] = 1
            # Raised only after this step is counted and logged, so the record it names is in metrics.jsonl.
            abort = self.nonfinite_run >= cfg.max_nonfinite_steps
        self.optimizer.zero_grad(set_to_none=True)
        if self.master is not None:
            self.module.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        self.step_count += 1
        now = time.perf_counter()
        metrics.update({"train/lr": lr, "train/grad_norm": grad_norm.item(), "train/step_s": now - self._t_last})
        for o in self.observers:
            o.step(now - self._t_last, metrics)
        self._t_last = now
        if self.dist.is_main and (self.step_count % cfg.log_every == 0 or self.step_count == self.total_steps
                                  or abort):
            self.log.log(self.step_count, metrics)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=progress_info(metrics))
        if abort:  # step_count numbers this step as metrics.jsonl does (from 1)
            raise NonFiniteError(
                f"{self.nonfinite_run} consecutive steps with a non-finite loss or gradient norm; last at step "
                f"{self.step_count} ({batch_info or 'batch indices not recorded'}); aborting"
            )
        if cfg.save_every and self.step_count % cfg.save_every == 0 and self.step_count < self.total_steps:
            self.save_checkpoint()
        return finite

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_state(),
            "skipped_steps": self.skipped_steps,
            "extra": self.extra_state,
            "master": self.master or [],  # bf16 weights: the fp32 values the model's weights are rounded from
        }

    def save_checkpoint(self) -> None:
        if self.layers:  # sharded: every rank writes its part (the optimizer's too) into one staging directory
            state = {k: v for k, v in self.state().items() if k != "optimizer"}
            sharding.save(self.run_dir / "checkpoints", self.step_count, self.cfg.keep_checkpoints, self.model,
                          self.optimizer, state)
            return
        if self.dist.is_main:
            checkpoint.save(self.run_dir / "checkpoints", self.step_count, self.module, self.state(), self.cfg.keep_checkpoints)
        barrier()

    def _resume(self) -> None:
        path = checkpoint.latest(self.run_dir / "checkpoints")
        if path is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint under {self.run_dir / 'checkpoints'} (nothing to resume; "
                "drop --resume to start fresh)"
            )
        if self.layers:
            state = sharding.load(path, self.model, self.optimizer)
        elif sharding.is_sharded(path):
            raise checkpoint.CheckpointError(f"{path}: a sharded (--fsdp) checkpoint: resume it with --fsdp under "
                                             "torchrun")
        else:
            state = checkpoint.load(path, self.module)
            self.optimizer.load_state_dict(state["optimizer"])
        if self.master is not None:
            if len(state.get("master", [])) != len(self.master):
                raise checkpoint.CheckpointError(f"{path}: no fp32 master weights to resume weights_dtype bf16 from")
            for m, saved in zip(self.master, state["master"]):
                m.copy_(saved)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step_count = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.extra_state.update(state.get("extra", {}))
        self.resumed_from = path
        if self.step_count >= self.total_steps:
            # A resume that would silently train zero steps is a classic complaint: say it out loud.
            print(f"resume: the run is finished: checkpoint {path.name} is at step {self.step_count} of "
                  f"{self.total_steps}; nothing left to train (raise --max-steps to train on)")

    def count(self, samples: int = 0, tokens: int = 0, gen_tokens: int = 0, gen_s: float = 0.0) -> None:
        """Report work done to the observers (this process's share): samples and non-pad tokens that reach the loss,
        generated tokens and the seconds spent generating them."""
        for o in self.observers:
            o.count(samples, tokens, gen_tokens, gen_s)

    def shard_frozen(self, model: torch.nn.Module) -> None:
        """--fsdp under torchrun: shard a frozen model built after the Engine (a reward model); else nothing."""
        if self.layers:
            sharding.shard_frozen(model, self.dist.device, self.cfg.precision)

    def full_weights(self):
        """Sampling: every FSDP layer gathered for the block (ranks run different numbers of forwards)."""
        return sharding.full_weights(self.layers) if self.layers else contextlib.nullcontext()

    def close(self) -> None:
        """End of training. With --fsdp, the full weights are gathered into the main process's model for saving."""
        if self.layers:
            sharding.consolidate(self.model, self.dist.is_main)
        self.log.close()
        for o in self.observers:
            o.close()


def rng_state() -> dict[str, Any]:
    """RNG states as tensors / plain containers so they reload with weights_only=True."""
    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
