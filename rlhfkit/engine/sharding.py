"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for `--fsdp`: sharded decoder layers, sharded checkpoints
(torch.distributed.checkpoint), and the full model gathered at the end for one safetensors export.

What is sharded: every decoder layer (the classes a Hugging Face model lists in `_no_split_modules`, e.g.
LlamaDecoderLayer) is one FSDP unit: its parameters, gradients and AdamW state live 1/world_size on each rank and are
all-gathered for its forward and backward only. Everything else (token embeddings, final norm, LM head, a value or
score head) stays replicated, as under DDP, with its gradients averaged here in one all-reduce. For a 7B Llama that
is the ~4% of parameters outside the layers; in exchange every forward path the trainers use works unchanged: a
reference pass through the transformer body alone (`modeling.backbone`), the log-prob heads that read the LM head's
weight directly, the sampler. The Engine's module is the FSDP root (owning no parameters), so the layers' all-gathers
are scheduled from one place.

Frozen models (a reference policy, a reward model) are sharded the same way (`shard_frozen`): a rank holds 1/world of
their layers. Their forwards all-gather layer by layer, so every rank must run the same number of them, as the
trainers do (each rank has the same number of micro-batches and rollout chunks).

Sampling runs `full_weights()`: the layers are all-gathered once for the whole rollout and resharded after, because
ranks sample different lengths and so run different numbers of forwards (a per-layer all-gather would deadlock).
The full policy is then resident during sampling only.

Two private details of FSDP2 (torch 2.13) are used, both marked where they are: the root's `_lazy_init` and the
forward-hook handles `consolidate` removes. After a torch upgrade, tests/test_fsdp.py says whether they still hold.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STATE_FILE = "state-rank{rank}.pt"  # per-rank trainer state (RNG, schedule, counters) in a sharded checkpoint
SHARDED_DIR = "sharded"  # the torch.distributed.checkpoint directory (model and optimizer, one file per rank)


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of every Hugging Face model inside `module`: instances of the classes the models name in
    `_no_split_modules` (the unit transformers' own device maps never split)."""
    names: set[str] = set()
    for m in module.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in module.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError("fsdp: found no decoder layers to shard (no Hugging Face model with _no_split_modules)")
    return layers


def _shard(module: torch.nn.Module, device: torch.device, precision: str) -> list[torch.nn.Module]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # bf16: the layers compute in bf16 from fp32 shards (the fp32 values are what AdamW updates and what is saved),
    # and gradients are reduced in fp32
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32)
    layers = decoder_layers(module)
    seen: set[int] = set()
    for layer in layers:
        ids = {id(p) for p in layer.parameters()}
        if ids & seen:
            raise ValueError("fsdp: two decoder layers share parameters (a critic whose frozen weights are the "
                             "policy's under LoRA?); use --critic shared, or train without --fsdp")
        seen |= ids
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    replicated = {p for p in module.parameters() if id(p) not in seen}
    fully_shard(module, mesh=mesh, mp_policy=mp, ignored_params=replicated)
    # The root must be initialised before any layer runs: a reference or rollout forward reaches the layers without
    # the root's forward, and a layer that runs first would claim to be a root itself.
    module._get_fsdp_state()._lazy_init()
    # FSDP creates a layer's full-size parameters at its first all-gather; were that inside torch.inference_mode (a
    # reference or rollout pass, before any training forward), they would be inference tensors that training may
    # not write to. Created here, outside it, they are ordinary tensors that inference passes may refill.
    with torch.no_grad():
        for layer in layers:
            layer.unshard()
            layer.reshard()
    return layers


def shard(module: torch.nn.Module, device: torch.device, precision: str) -> list[torch.nn.Module]:
    """Shard the trained `module` in place (decoder layers FSDP units, the rest replicated); returns the layers."""
    return _shard(module, device, precision)


def shard_frozen(module: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """Shard a frozen model (reference, reward model) the same way, so no rank holds all of its layers."""
    _shard(module, device, precision)
    return module


def replicated_grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    DTensor = _dtensor()
    return [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]


def average_replicated_grads(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean over ranks) the gradients FSDP does not reduce: those of the replicated parameters."""
    grads = replicated_grads(params)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, new in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(new.view_as(g))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over a mix of sharded (DTensor) and replicated gradients: the squared norms of
    the local shards are summed over ranks, the replicated ones counted once. Returns the global norm (a tensor)."""
    DTensor = _dtensor()
    sharded = [p.grad.to_local() for p in params if p.grad is not None and isinstance(p.grad, DTensor)]
    plain = replicated_grads(params)
    device = (sharded or plain or [torch.zeros(())])[0].device
    sq = torch.zeros((), device=device, dtype=torch.float32)
    for g in sharded:
        sq += g.float().pow(2).sum()
    dist.all_reduce(sq)
    for g in plain:
        sq += g.float().pow(2).sum()
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # the same coefficient clip_grad_norm_ uses
    if max_norm != float("inf"):
        for g in sharded + plain:
            g.mul_(coef.to(g.dtype))
    return norm


@contextlib.contextmanager
def full_weights(layers: list[torch.nn.Module]):
    """Every layer all-gathered once, for a block of forwards whose number differs between ranks (sampling), and
    resharded after. Gradients are not tracked for these forwards."""
    for layer in layers:
        layer.unshard()
        layer.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.reshard()
            layer.set_reshard_after_forward(True)


# ----------------------------------------------------------------------------------------------- checkpoints
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # frozen weights (LoRA's base) never change: a resume reloads them from the model the run starts from
    return StateDictOptions(ignore_frozen_params=True, **kw)


def save(ckpt_dir: Path, step: int, keep: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any]) -> None:
    """Checkpoint `step`, crash-safe as `checkpoint.save`: the main process creates the staging directory, every rank
    writes its shards of the model and optimizer (torch.distributed.checkpoint) and its own state (RNG, counters)
    there, and the main process commits it (manifest, rename, COMPLETE) once all have written."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from rlhfkit.engine import checkpoint

    main = dist.get_rank() == 0
    staging = checkpoint.begin(ckpt_dir, step) if main else checkpoint.staging_path(ckpt_dir, step)
    dist.barrier()
    msd, osd = get_state_dict(module, optimizer, options=_options())
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(staging / SHARDED_DIR))
    torch.save(state, staging / STATE_FILE.format(rank=dist.get_rank()))
    dist.barrier()
    if main:
        checkpoint.commit(ckpt_dir, staging, step, keep)
    dist.barrier()


def load(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The inverse of `save` (resharded if the process count changed); returns this rank's state (rank 0's when
    the checkpoint had fewer ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from rlhfkit.engine.checkpoint import CheckpointError

    if not (path / SHARDED_DIR).is_dir():
        raise CheckpointError(f"{path}: not a sharded checkpoint (written without --fsdp): resume without --fsdp")
    msd, osd = get_state_dict(module, optimizer, options=_options())
    both = {"model": msd, "optimizer": osd}
    dcp.load(both, checkpoint_id=str(path / SHARDED_DIR))
    set_state_dict(module, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"],
                   options=_options(strict=False))
    own = path / STATE_FILE.format(rank=dist.get_rank())
    return torch.load(own if own.exists() else path / STATE_FILE.format(rank=0), map_location="cpu",
                      weights_only=True)


def is_sharded(path: Path) -> bool:
    return (path / SHARDED_DIR).is_dir()


def consolidate(module: torch.nn.Module, is_main: bool) -> None:
    """Gather the full (fp32) weights on the main process and make its `module` a plain model again: the gathered
    weights as ordinary parameters (on its device) and FSDP's forward hooks removed. So the usual save
    (save_pretrained: one safetensors model, or a peft adapter) writes the whole model, and what a trainer does with
    the model after training on the main process alone (the reward model's normalisation) runs without the other
    ranks. Every rank must call it; the other ranks' modules stay sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return
    DTensor = _dtensor()
    done: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for name, p in list(module.named_parameters(remove_duplicate=False)):
            if id(p) not in done:
                value = full[name] if name in full else p.detach()
                device = p.to_local().device if isinstance(p, DTensor) else p.device
                done[id(p)] = torch.nn.Parameter(value.detach().to(device).clone(), requires_grad=p.requires_grad)
            owner, _, attr = name.rpartition(".")
            (module.get_submodule(owner) if owner else module)._parameters[attr] = done[id(p)]
    for m in module.modules():
        if isinstance(m, FSDPModule):  # fully_shard = forward hooks + a subclass: undo both
            state = m._get_fsdp_state()
            for handle in {state._pre_forward_hook_handle, state._post_forward_hook_handle}:
                handle.remove()
            m.__class__ = next(c for c in type(m).__bases__ if c is not FSDPModule)
