"""On-disk cache of reference-model sequence log-probs for `rlhfkit dpo --precompute-ref true`.

The reference model is frozen, so its log-prob of every (prompt, completion) in the training set is a constant:
computing it once before training removes one forward pass per step and the reference model from memory. The
cache is keyed by everything that changes those numbers, and nothing else:

    reference model  sha256 of every file in its directory (or the hub id, which we cannot hash offline)
    tokenizer        sha256 of every file in its directory (chat template and special tokens included)
    data             sha256 of the data file, the row count after validation, column_map, skip_invalid, split
    tokenisation     max_length, max_prompt_length (truncation), the example layout (paired, or KTO with its
                     mismatched-completion assignment seed), precision, and a format version

so a second run with the same inputs reuses it, and a changed data file (or model, or truncation) misses. Values
are written with safetensors (no pickle) through a temporary file and an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def default_dir() -> Path:
    """$RLHFKIT_CACHE/ref_logps, else ~/.cache/rlhfkit/ref_logps."""
    root = os.environ.get("RLHFKIT_CACHE") or Path.home() / ".cache" / "rlhfkit"
    return Path(root) / "ref_logps"


def hash_path(name_or_path: str) -> str:
    """sha256 over (relative name, content) of every file under a directory, or of one file. A string that is not
    a local path (a hub id) hashes as itself: pin a revision, or use a local copy, for a trustworthy key."""
    p = Path(name_or_path)
    h = hashlib.sha256()
    if p.is_file():
        files = [p]
        base = p.parent
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        base = p
    else:
        h.update(f"hub:{name_or_path}".encode())
        return h.hexdigest()
    for f in files:
        h.update(str(f.relative_to(base)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def cache_key(fields: dict[str, Any]) -> str:
    """A stable hash of a JSON-serialisable description of the cached computation."""
    blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def path_for(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir or default_dir()) / f"{key}.safetensors"


def load(cache_dir: str | Path, key: str, n: int) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None on a miss (or a file of the wrong length, which is then ignored)."""
    from safetensors.torch import load_file

    path = path_for(cache_dir, key)
    if not path.exists():
        return None
    tensors = load_file(str(path))
    if any(t.shape[0] != n for t in tensors.values()):
        return None
    return tensors


def save(cache_dir: str | Path, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write atomically: a crash never leaves a truncated cache under the final name."""
    from safetensors.torch import save_file

    path = path_for(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v, default=str) for k, v in meta.items()})
    tmp.replace(path)
    return path
