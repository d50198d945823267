"""`rlhfkit eval-rm`: how good is a reward model on held-out preference pairs? JSON out.

Reports (ties excluded from every pairwise number):
- `accuracy`: fraction of pairs with r(chosen) > r(rejected) (an exact score tie counts 1/2), with a normal-
  approximation 95% interval, and per source (`source_column`, default "source", else the file name);
- `ece`: expected calibration error of P(chosen > rejected) = sigmoid(r_c - r_r), 10 equal-width bins. Every pair
  enters in both orientations, (sigmoid(d), 1) and (sigmoid(-d), 0), so the number does not depend on which
  response a file happens to list first (and a data set whose labels are all "chosen" can still be miscalibrated
  towards 0.5 or 1);
- `length_correlation`: the verbosity probe. On matched pairs (same prompt), the Pearson correlation of the reward
  difference r_c - r_r with the length difference len_c - len_r in tokens (`length_spearman`: the rank version).
  Comparing within a pair removes the prompt's effect. `label_prefers_longer` is the same question asked of the
  labels: the fraction of pairs of unequal length whose chosen response is the longer one (annotator bias);
- on the built-in world's data (prompts that parse as world prompts, or rows with "world": true) the annotator
  `ceiling` (`rlhfkit.world.ceiling`: the best expected accuracy of any reward model on these labels) and
  `accuracy / ceiling`; null elsewhere.

    from rlhfkit import eval_rm
    eval_rm.run(eval_rm.Config(reward="runs/rm", data="heldout_prefs.jsonl", output="rm_eval.json"))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit import data as data_lib
from rlhfkit.diagnostics import metrics
from rlhfkit.models.rewards import RewardFn, load_reward, member_dirs


@dataclass
class Config:
    reward: str = ""
    """Reward to evaluate: a reward-model directory (single or ensemble), an http:// serve-rm URL, or
    package.module:function."""
    data: str = ""
    """Held-out preference pairs (prompt/chosen/rejected or implicit chosen/rejected); tie rows are excluded."""
    output: str = "rm_eval.json"
    """Where the JSON results are written."""
    split: str = "test"
    """Split for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. good=chosen,bad=rejected."""
    skip_invalid: bool = False
    """Skip (and count) invalid rows instead of stopping at them."""
    source_column: str = "source"
    """Column naming each row's source for per-source accuracy (absent: the file name)."""
    tokenizer: str = ""
    """Tokenizer for response lengths (default: the reward model's; words when there is none)."""
    bins: int = 10
    """Equal-width bins of the calibration error."""
    world: bool | None = None
    """Treat rows as built-in world data for the ceiling: None detects (prompt parses, or "world": true)."""
    verbosity_scale: float = 1.0
    """The world annotators' verbosity scale the labels were made with (for the ceiling)."""
    limit: int = 0
    """Evaluate only the first N rows (0: all)."""
    batch_size: int = 64
    """Sequences per scoring batch."""
    device: str = "auto"
    """Device for an in-process reward model: auto (CUDA when there is one), cpu, cuda, cuda:1, ..."""

    def validate(self) -> None:
        if not self.reward or not self.data:
            raise ValueError("reward and data are required")
        if self.bins < 1:
            raise ValueError("bins must be >= 1")


# ----------------------------------------------------------------------------------------------- pure metrics
def pairwise_accuracy(diff: torch.Tensor) -> float:
    """mean(1[d > 0] + 0.5 * 1[d == 0]) over pairs, d = r_chosen - r_rejected."""
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def ece(diff: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error of sigmoid(d) with both orientations of every pair (module docstring):
    sum_b (n_b / 2N) |mean p in b - mean label in b|."""
    diff = diff.double()
    p = torch.cat([torch.sigmoid(diff), torch.sigmoid(-diff)])
    y = torch.cat([torch.ones_like(diff), torch.zeros_like(diff)]).double()
    b = (p * bins).long().clamp(max=bins - 1)
    total = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            total += m.sum().item() / len(p) * abs(p[m].mean().item() - y[m].mean().item())
    return total


def _corr(fn, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """A correlation from rlhfkit.diagnostics.metrics, or None when either series is constant (undefined, not 0)."""
    if len(x) < 2 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return None
    return fn(x.double().tolist(), y.double().tolist())


def pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    return _corr(metrics.pearson, x, y)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    return _corr(metrics.spearman, x, y)


# ----------------------------------------------------------------------------------------------- evaluation
def _length_fn(cfg: Config):
    """Response length in tokens of the reward model's tokenizer (or `tokenizer`), else in words."""
    name = cfg.tokenizer
    if not name and Path(cfg.reward).is_dir():
        name = str(member_dirs(cfg.reward)[0])
    if name:
        from rlhfkit import models

        tok = models.load_tokenizer(name)
        return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), "tokens"
    return (lambda text: len(text.split())), "words"


def _is_world(row: dict, prompt: Any) -> bool:
    if "world" in row:
        return bool(row["world"])
    from rlhfkit.world import parse_prompt

    try:
        parse_prompt(data_lib.prompt_text(prompt))
        return True
    except (ValueError, TypeError, KeyError):
        return False


def evaluate(reward: RewardFn, rows: list[dict], cfg: Config, length_fn=None, default_source: str = "data") -> dict:
    """All metrics for `rows` scored by `reward` (see the module docstring)."""
    length_fn = length_fn or (lambda text: len(text.split()))
    kept = [r for r in rows if not r.get("tie", False)]
    n_ties = len(rows) - len(kept)
    if not kept:
        raise data_lib.DataError("eval-rm: no non-tie pairs to evaluate")
    parts = [data_lib.preference_parts(r) for r in kept]
    prompts = [p for p, _, _ in parts]
    chosen = [data_lib.completion_text(c) for _, c, _ in parts]
    rejected = [data_lib.completion_text(r) for _, _, r in parts]
    out = reward(prompts + prompts, chosen + rejected)
    n = len(kept)
    r_c, r_r = out["score"][:n].double(), out["score"][n:].double()
    diff = r_c - r_r
    acc = pairwise_accuracy(diff)
    res: dict[str, Any] = {
        "n_pairs": n, "n_ties_excluded": n_ties, "accuracy": acc,
        "accuracy_ci95": 1.96 * math.sqrt(max(acc * (1 - acc), 0.0) / n),
        "ece": ece(diff, cfg.bins),
        "mean_chosen": r_c.mean().item(), "mean_rejected": r_r.mean().item(), "mean_margin": diff.mean().item(),
    }
    # per-source accuracy
    sources = [str(r.get(cfg.source_column, default_source)) for r in kept]
    res["per_source"] = {s: {"accuracy": pairwise_accuracy(diff[torch.tensor([x == s for x in sources])]),
                             "n_pairs": sources.count(s)} for s in sorted(set(sources))}
    # verbosity probe on matched pairs
    dl = torch.tensor([length_fn(c) - length_fn(r) for c, r in zip(chosen, rejected)], dtype=torch.float64)
    res["length_correlation"] = pearson(diff, dl)
    res["length_spearman"] = spearman(diff, dl)
    unequal = dl != 0
    res["label_prefers_longer"] = (dl[unequal] > 0).double().mean().item() if unequal.any() else None
    res["rm_prefers_longer"] = ((diff[unequal] > 0) == (dl[unequal] > 0)).double().mean().item() \
        if unequal.any() else None
    if "std" in out:  # ensembles: disagreement, and whether it flags the pairs the ensemble gets wrong
        std = ((out["std"][:n] + out["std"][n:]) / 2).double()
        res["ensemble_std_mean"] = std.mean().item()
        wrong = (diff <= 0).double()
        res["ensemble_std_error_correlation"] = pearson(std, wrong)
    # the annotator ceiling on world data
    world = [cfg.world if cfg.world is not None else _is_world(r, p) for r, p in zip(kept, prompts)]
    res["ceiling"] = None
    if any(world):
        from rlhfkit.world import ceiling, default_annotators

        pool = default_annotators(cfg.verbosity_scale)
        named = {r.get("annotator") for r, w in zip(kept, world) if w} - {None}
        anns = [a for a in pool if a.name in named] or pool  # the annotators that labelled these rows
        items = [(data_lib.prompt_text(p), c, rj) for p, c, rj, w in zip(prompts, chosen, rejected, world) if w]
        wmask = torch.tensor(world)
        res["world_pairs"] = len(items)
        res["world_accuracy"] = pairwise_accuracy(diff[wmask])
        res["ceiling"] = ceiling(items, anns)
        res["ceiling_known_annotator"] = ceiling(items, anns, known_annotator=True)
        res["accuracy_over_ceiling"] = res["world_accuracy"] / res["ceiling"] if res["ceiling"] else None
        res["ceiling_annotators"] = [a.name for a in anns]
    return res


def run(cfg: Config) -> dict:
    rows = data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid,
                              expect=[data_lib.DataType.PREFERENCE, data_lib.DataType.IMPLICIT_PREFERENCE])
    if cfg.limit:
        rows = rows[: cfg.limit]
    reward = load_reward(cfg.reward, cfg.device, cfg.batch_size)
    length_fn, unit = _length_fn(cfg)
    res = evaluate(reward, rows, cfg, length_fn, default_source=Path(cfg.data).name)
    res.update(length_unit=unit, reward=cfg.reward, data=cfg.data)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    ceil = f", ceiling {res['ceiling']:.3f}" if res["ceiling"] is not None else ""
    print(f"eval-rm: accuracy {res['accuracy']:.3f} on {res['n_pairs']} pairs{ceil}, ece {res['ece']:.3f}, "
          f"length correlation {res['length_correlation']} -> {out}")
    return res
