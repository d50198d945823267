"""Crash-safe checkpoints.

A checkpoint is written into a staging directory, every file is fsync'ed, a manifest with sha256 hashes is
written, the directory is renamed into place (atomic on POSIX) and only then marked complete with a `COMPLETE`
file. A crash (kill -9, full disk, exception) at any point leaves either the previous checkpoints untouched or a
staging directory that `latest()` ignores. Retention never deletes the only complete checkpoint.

Layout:  <run>/checkpoints/step-000120/{model.safetensors, state.pt, manifest.json, COMPLETE}
With --fsdp (engine/sharding.py): step-000120/{sharded/ (torch.distributed.checkpoint: model and optimizer, one
file per rank), state-rank<r>.pt, manifest.json, COMPLETE}; the manifest covers the files under sharded/ too.
model.safetensors holds every weight, or only the trainable ones when some are frozen (LoRA): frozen weights are
reloaded from the model the run starts from, so a resume is exact either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
TRAINABLE_ONLY = "rlhfkit_trainable_only"  # safetensors metadata key of a checkpoint that holds trainable weights only


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the file at fault."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter] | None:
    """The parameters that train, by name, when some do not (LoRA: the adapters, and heads peft keeps trainable);
    None when every parameter trains."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return None
    return {name: p for name, p in params.items() if p.requires_grad}


def _write_files(staging: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    trainable = _trainable(model)
    if trainable is None:
        # safetensors for weights (no pickle); save_model handles tied embeddings.
        save_model(model, str(staging / "model.safetensors"))
    else:
        # Frozen weights never change, and a resume reloads them from where the run loaded them: a LoRA checkpoint
        # of a 7B model is then megabytes, not 14 GB. The file says which kind it is.
        save_file({name: p.detach().contiguous() for name, p in trainable.items()},
                  str(staging / "model.safetensors"), metadata={"format": "pt", TRAINABLE_ONLY: "1"})
    # Everything else (optimizer, scheduler, RNG, trainer counters) is tensors and plain containers, so it loads
    # back with torch.load(weights_only=True).
    torch.save(state, staging / "state.pt")


def save(ckpt_dir: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and apply retention. Returns the final directory."""
    staging = begin(ckpt_dir, step)
    _write_files(staging, model, state)
    return commit(ckpt_dir, staging, step, keep)


def staging_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f".staging-step-{step:08d}"


def begin(ckpt_dir: str | Path, step: int) -> Path:
    """An empty staging directory for checkpoint `step` (the files go there, then `commit`)."""
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    staging = staging_path(ckpt_dir, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def commit(ckpt_dir: str | Path, staging: Path, step: int, keep: int = 2) -> Path:
    """fsync every file written into `staging` (subdirectories too: a sharded checkpoint's), hash them into the
    manifest, rename the directory into place, mark it COMPLETE and apply retention."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step-{step:08d}"
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    for p in files:
        _fsync_file(p)
    for d in sorted({p.parent for p in files}):
        _fsync_dir(d)
    manifest = {"step": step, "files": {str(p.relative_to(staging)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                                        for p in files}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(staging / MANIFEST)
    _fsync_dir(staging)
    if final.exists():  # a re-save of the same step (resume replayed it): replace the old one
        shutil.rmtree(final)
    staging.rename(final)
    _fsync_dir(ckpt_dir)
    (final / COMPLETE).write_text("ok\n")
    _fsync_file(final / COMPLETE)
    _fsync_dir(final)
    prune(ckpt_dir, keep)
    return final


def is_complete(path: Path, verify: bool = False) -> bool:
    if not (path / COMPLETE).exists() or not (path / MANIFEST).exists():
        return False
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    try:  # another process may prune this checkpoint while we read it: a vanished file means "not complete"
        for name, meta in manifest["files"].items():
            p = path / name
            if p.stat().st_size != meta["bytes"] or verify and sha256(p) != meta["sha256"]:
                return False
    except OSError:
        return False
    return True


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.exists():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir() and is_complete(p))


def latest(ckpt_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files match its manifest (hashes verified), or None."""
    for path in reversed(complete_checkpoints(ckpt_dir)):
        if is_complete(path, verify=True):
            return path
    return None


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (at least one); remove stale staging dirs."""
    done = complete_checkpoints(ckpt_dir)
    for old in done[: max(0, len(done) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_dir.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def load(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into `model` (in place) and return the rest of the saved state."""
    path = Path(path)
    try:
        _load_weights(model, path / "model.safetensors")
    except Exception as e:  # a foreign or changed file: a header safetensors cannot parse, or other shapes
        raise CheckpointError(f"{path / 'model.safetensors'}: cannot load into this model: {_first_line(e)}") from None
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain containers, which is all save() writes, so this file
        # was changed or comes from elsewhere. torch's own text suggests weights_only=False: never do that here.
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?: Please use|\n|$)", str(e))
        reason = detail.group(1).strip() if detail else _first_line(e)
        raise CheckpointError(f"{path / 'state.pt'}: refused to load: not plain tensors and containers, as rlhfkit "
                              f"writes ({reason})") from None
    except Exception as e:  # not a torch file at all (truncated, another format): the reader's reason, no traceback
        raise CheckpointError(f"{path / 'state.pt'}: cannot load: {_first_line(e)}") from None


def _load_weights(model: torch.nn.Module, file: Path) -> None:
    """All of a model's weights, or (a checkpoint written with frozen weights left out) exactly its trainable ones."""
    with safe_open(str(file), "pt") as f:
        trainable_only = (f.metadata() or {}).get(TRAINABLE_ONLY) == "1"
    if not trainable_only:
        load_model(model, str(file))
        return
    tensors = load_file(str(file))
    params = _trainable(model) or dict(model.named_parameters())
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"its trainable weights are not this model's: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise ValueError(f"{name}: shape {tuple(tensors[name].shape)} in the file, {tuple(p.shape)} here")
            p.copy_(tensors[name])


def _first_line(e: BaseException) -> str:
    """The start of an exception's message, on one line ("Error(s) in loading ...:" keeps the line it introduces)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
