"""`rlhfkit world export`: write the built-in world's datasets as JSONL in TRL's conversational formats.

Files written into `out_dir`:
- `pretrain.jsonl`         {"messages": [user, assistant], "kind", "style"}     (language-modelling text)
- `sft.jsonl`              {"prompt": [user], "completion": [assistant], "kind", "style"}
- `train_prompts.jsonl`    {"prompt": [user], "kind", "id"}                     (RL / candidate sampling)
- `heldout_prompts.jsonl`  {"prompt": [user], "kind", "id"}                     (evaluation only)
- `world.json`             manifest: the WorldConfig, row counts, sha256 of each file
- `README.md`              what the files are, for someone who finds the folder
Extra columns ("kind", "style", "id") are ignored by TRL and by rlhfkit's loaders.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.world.corpus import WorldConfig, heldout_prompts, pretrain_corpus, sft_demos, train_prompts

_W = WorldConfig()


@dataclass
class Config:
    """Options of `rlhfkit world export`."""

    FLAGS = {"out_dir": "--output-dir"}  # the command line's name for a destination directory (--out-dir: alias)

    out_dir: str = "runs/world"
    """Folder to write the files into (created if missing; existing files of the same names are replaced)."""
    seed: int = _W.seed
    """World seed: the same seed writes byte-identical files."""
    n_pretrain: int = _W.n_pretrain
    """Pretraining conversations."""
    n_sft: int = _W.n_sft
    """SFT demonstrations."""
    n_train_prompts: int = _W.n_train_prompts
    """RL / candidate-sampling prompts (train split)."""
    n_heldout_prompts: int = _W.n_heldout_prompts
    """Evaluation prompts (held-out split)."""

    def world(self) -> WorldConfig:
        """The WorldConfig these options describe (other world settings at their defaults)."""
        return WorldConfig(seed=self.seed, n_pretrain=self.n_pretrain, n_sft=self.n_sft,
                           n_train_prompts=self.n_train_prompts, n_heldout_prompts=self.n_heldout_prompts)


README = """# Built-in world data (rlhfkit)

Synthetic assistant task with computable ideal answers; see rlhfkit/world/ for the generator and the judge.

| file | TRL format | rows |
|---|---|---|
| pretrain.jsonl | `messages` (conversational language modelling); styles mixed, so a model trained on it is unaligned | {pretrain} |
| sft.jsonl | `prompt` + `completion` (conversational); mostly ideal responses | {sft} |
| train_prompts.jsonl | `prompt` only, for online RL or sampling candidates | {train_prompts} |
| heldout_prompts.jsonl | `prompt` only, for evaluation; no prompt text here occurs in any other file's split | {heldout_prompts} |

Extra columns: `kind` (prompt kind), `style` (response style), `id`. Score any response with
`rlhfkit.world.gold(prompt_text, response_text)`. Seed {seed}; `world.json` has the full config and file hashes.
"""


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write rows atomically (tmp file in the same folder, fsync, rename); returns the sha256 of the bytes."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    _atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # A crash mid-write leaves the old file (or none), never a truncated one that parses as a short dataset.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(cfg: Config) -> dict:
    """Write the world's datasets into `cfg.out_dir`; returns {"out_dir", "files": {name: rows}}."""
    world = cfg.world()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets = {"pretrain": pretrain_corpus(world), "sft": sft_demos(world),
                "train_prompts": train_prompts(world), "heldout_prompts": heldout_prompts(world)}
    files = {}
    for name, rows in datasets.items():
        files[f"{name}.jsonl"] = {"rows": len(rows), "sha256": write_jsonl(out / f"{name}.jsonl", rows)}
    manifest = {"world": dataclasses.asdict(world), "files": files}
    _atomic_write(out / "world.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    _atomic_write(out / "README.md", README.format(seed=world.seed, **{k: len(v) for k, v in datasets.items()})
                  .encode())
    return {"out_dir": str(out), "files": {k: v["rows"] for k, v in files.items()}}
