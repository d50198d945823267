"""What a run writes while it trains: metrics.jsonl (plus TensorBoard / wandb mirrors) and the progress bar."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rlhfkit.engine import TrainConfig


class MetricsLog:
    """metrics.jsonl (one record per logged step) plus optional TensorBoard / wandb mirrors."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        if resume_step >= 0 and self.path.exists():
            # Drop records a crashed run wrote after the checkpoint we resume from, so every step appears once.
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the crash
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            self.path.write_text("".join(k + "\n" for k in keep))
        # a fresh run (resume_step < 0) starts a fresh log; a resumed one appends after the kept records
        self.file = open(self.path, "a" if resume_step >= 0 else "w", buffering=1)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.wandb_project:
            import wandb  # credentials come from the environment (WANDB_API_KEY), never from config files

            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, **{k: plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(rec, step=step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()


def plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN; keep it visible
    return v


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def progress_bar(enabled: bool):
    """A rich progress bar with ETA; a no-op context when disabled or not on the main process."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )


SHOWN = ("train/loss", "rewards/accuracy", "rollout/score", "kl/seq", "train/grad_norm")  # in the progress bar


def progress_info(metrics: dict[str, Any]) -> str:
    """The progress bar's one-line summary of a step's metrics (the SHOWN ones, by their short names)."""
    return "  ".join(f"{k.split('/')[-1]}={_fmt(v)}" for k, v in metrics.items() if k in SHOWN)


def _fmt(v: Any) -> str:
    v = v.item() if isinstance(v, torch.Tensor) else v
    return f"{v:.4g}" if isinstance(v, float) else str(v)
