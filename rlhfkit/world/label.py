"""`rlhfkit world label`: label a candidates file with the simulated annotators into TRL preference rows.

Input, one JSON object per line: ``{"prompt": str | [messages], "responses": [str, ...], ...extra}`` (a
response may also be ``[{"role": "assistant", "content": ...}]``). The judge reads the last user message.

Modes:
- ``pairs``: responses are paired ``(0, 1), (2, 3), ...`` (``pairing="consecutive"``) or after a seeded
  shuffle (``"random"``); each pair is labelled by one annotator drawn uniformly (`annotators.decide`).
- ``ranking``: one annotator per prompt ranks all K responses by Plackett-Luce, i.e. sorts them by
  ``u / temperature + Gumbel noise``. PL's pairwise marginals are exactly the Bradley-Terry probabilities
  ``sigmoid((u_i - u_j) / T)`` (the difference of two Gumbels is logistic), so the ranking is consistent
  with the pairs mode and with `ceiling`. The ranking expands into all K(K-1)/2 pairs, each then subject to
  the annotator's tie margin and lapse noise (per pair, as in pairs mode, so the pair marginals match
  `outcome_probs` exactly; a lapse can make the expanded pairs intransitive, as real labels are).

Every output row: ``{"prompt", "chosen", "rejected", "annotator", "choice": "a"|"b"|"tie", "tie": bool,
"group": int, "margin": float, ...extra}``. ``a`` is the pair's first response in candidate order, ``group``
the input row index (so a trainer can batch one prompt's pairs together, as InstructGPT did), ``margin`` the
annotator's stated strength (`annotators.strength`; 0 for ties and lapses). A kept tie has chosen = a,
rejected = b. With a conversational prompt, chosen / rejected are ``[{"role": "assistant", "content": ...}]``.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.world.annotators import Annotator, decide, default_annotators, strength, utility
from rlhfkit.world.export import _atomic_write


@dataclass
class Config:
    """Options of `rlhfkit world label`."""

    FLAGS = {"out": "--output"}  # the command line's name for a destination file (--out: alias)

    candidates: str = "candidates.jsonl"
    """Input JSONL: rows {"prompt": str or messages, "responses": [str, ...]} (e.g. from `rlhfkit sample`)."""
    out: str = "preferences.jsonl"
    """Output JSONL of preference rows (written atomically)."""
    mode: Literal["pairs", "ranking"] = "pairs"
    """"pairs": disjoint pairs, one annotator each; "ranking": one K-way ranking per prompt, all K(K-1)/2 pairs."""
    pairing: Literal["consecutive", "random"] = "consecutive"
    """Pairs mode: pair responses (0,1), (2,3), ... or the same after a seeded shuffle."""
    ties: Literal["drop", "keep"] = "drop"
    """Ties are dropped, or kept with "tie": true (for a loss that trains them towards 0.5)."""
    seed: int = 0
    """Seed of the annotator draws and choices: same seed and input -> identical output."""
    annotators: list[str] | None = None
    """Names of the default annotators to use (None = all: careful, confident, agreeable, noisy)."""
    verbosity_scale: float = 1.0
    """Multiplies every annotator's verbosity bias (0 = annotators without length bias)."""

    def __post_init__(self):
        if self.mode not in ("pairs", "ranking"):
            raise ValueError(f"mode must be 'pairs' or 'ranking', got {self.mode!r}")
        if self.pairing not in ("consecutive", "random"):
            raise ValueError(f"pairing must be 'consecutive' or 'random', got {self.pairing!r}")
        if self.ties not in ("drop", "keep"):
            raise ValueError(f"ties must be 'drop' or 'keep', got {self.ties!r}")

    def annotator_pool(self) -> list[Annotator]:
        """The annotators this config labels with."""
        pool = default_annotators(self.verbosity_scale)
        if self.annotators is None:
            return pool
        by_name = {a.name: a for a in pool}
        unknown = [n for n in self.annotators if n not in by_name]
        if unknown or not self.annotators:
            raise ValueError(f"unknown annotators {unknown}; known: {sorted(by_name)}")
        return [by_name[n] for n in self.annotators]


def _text(x) -> str:
    """Text of a prompt / response given as a string or as chat messages (last user / assistant turn)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and all(isinstance(m, dict) for m in x):
        role = "user" if any(m.get("role") == "user" for m in x) else x[-1].get("role")
        return [m for m in x if m.get("role") == role][-1]["content"]
    raise ValueError(f"expected a string or a list of chat messages, got {type(x).__name__}")


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(1.0 - rng.random() * (1 - 1e-12)))  # u in (0, 1], never log(0)


def _pairs_for_row(row: dict, cfg: Config, anns: list[Annotator], rng: random.Random) -> list[tuple]:
    """[(i, j, annotator, choice, margin)] for one candidates row."""
    prompt = _text(row["prompt"])
    resp = [_text(r) for r in row["responses"]]
    idx = list(range(len(resp)))
    out = []
    if cfg.mode == "pairs":
        if cfg.pairing == "random":
            rng.shuffle(idx)
        for i, j in zip(idx[0::2], idx[1::2]):
            ann = rng.choice(anns)
            i, j = min(i, j), max(i, j)  # "a" is always the earlier candidate
            choice, margin = decide(ann, utility(ann, prompt, resp[i]), utility(ann, prompt, resp[j]), rng)
            out.append((i, j, ann, choice, margin))
        return out
    ann = rng.choice(anns)
    u = [utility(ann, prompt, r) for r in resp]
    key = [ui / ann.temperature + _gumbel(rng) for ui in u]  # Plackett-Luce ranking by Gumbel-max
    for i in range(len(resp)):
        for j in range(i + 1, len(resp)):
            if abs(u[i] - u[j]) < ann.tie_margin:
                out.append((i, j, ann, "tie", 0.0))
                continue
            lapse = rng.random() < ann.noise
            choice = "a" if (key[i] > key[j]) != lapse else "b"
            out.append((i, j, ann, choice, 0.0 if lapse else strength(ann, u[i], u[j])))
    return out


def label_rows(rows: list[dict], cfg: Config) -> tuple[list[dict], dict]:
    """Label candidate rows in memory: (preference rows, counts). `run` is this plus file IO."""
    anns = cfg.annotator_pool()
    rng = random.Random(f"rlhfkit-world:{cfg.seed}:label")
    out = []
    counts = {"prompts": 0, "pairs": 0, "ties": 0, "ties_dropped": 0, "skipped": 0,
              "by_annotator": {a.name: 0 for a in anns}}
    for group, row in enumerate(rows):
        if "prompt" not in row or "responses" not in row:
            raise ValueError(f"candidates row {group}: needs 'prompt' and 'responses', has {sorted(row)}")
        if len(row["responses"]) < 2:
            counts["skipped"] += 1
            continue
        counts["prompts"] += 1
        conversational = not isinstance(row["prompt"], str)
        extra = {k: v for k, v in row.items() if k not in ("prompt", "responses")}
        resp = [_text(r) for r in row["responses"]]
        for i, j, ann, choice, margin in _pairs_for_row(row, cfg, anns, rng):
            tie = choice == "tie"
            counts["ties"] += tie
            if tie and cfg.ties == "drop":
                counts["ties_dropped"] += 1
                continue
            c, r = (resp[j], resp[i]) if choice == "b" else (resp[i], resp[j])
            if conversational:
                c, r = [{"role": "assistant", "content": c}], [{"role": "assistant", "content": r}]
            out.append({**extra, "prompt": row["prompt"], "chosen": c, "rejected": r, "annotator": ann.name,
                        "choice": choice, "tie": tie, "group": group, "margin": margin})
            counts["by_annotator"][ann.name] += 1
    counts["pairs"] = len(out)
    return out, counts


def run(cfg: Config) -> dict:
    """Read `cfg.candidates`, label, write `cfg.out` atomically; returns the counts plus "out"."""
    with open(cfg.candidates, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out_rows, counts = label_rows(rows, cfg)
    path = Path(cfg.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows).encode())
    return {**counts, "out": str(path)}
