"""Shared fixtures: a tiny tokenizer and Llama built offline inside the tests (nothing from the hub)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RLHFKIT_SHARED", ROOT.parent / "shared"))


def toy_rows(n: int = 256, seed: int = 0) -> list[dict]:
    """Conversational prompt-completion rows for a task a tiny model learns in seconds."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
            "completion": [{"role": "assistant", "content": f"The answer is {a + b}."}],
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A directory with sft.jsonl, lm.jsonl, a tokenizer (tok/) and a tiny random Llama (model/)."""
    from rlhfkit import models
    from rlhfkit.data.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("toy")
    rows = toy_rows()
    write_jsonl(d / "sft.jsonl", rows)
    write_jsonl(d / "lm.jsonl", [{"messages": r["prompt"] + r["completion"]} for r in rows])
    texts = [m["content"] for r in rows for m in r["prompt"] + r["completion"]]
    tok = train_tokenizer(texts, vocab_size=320, min_frequency=1)
    tok.save_pretrained(d / "tok")
    model = models.build_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    models.save(model, tok, d / "model")
    return d


def kill_when_checkpointed(proc, checkpoints, step: int, timeout: float = 120) -> None:
    """SIGKILL a training subprocess once it has a complete checkpoint at `step` or later (a crash mid-run)."""
    import os
    import signal
    import time

    from rlhfkit.engine import checkpoint

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        done = checkpoint.complete_checkpoints(checkpoints)
        if done and int(done[-1].name.split("-")[1]) >= step:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
