"""HTML pieces of `rlhfkit report`: escaping and number formatting (every string from a model, dataset or file
goes through `esc`), tables, matplotlib figures inlined as base64 PNGs, the per-method colours and the page's CSS."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any


def esc(x: Any) -> str:
    """Inert text: every model output, prompt, file name and message goes through here."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "&ndash;" if x is None else esc(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return esc(x)
        return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
    return esc(x)


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are already-escaped HTML (use esc / fmt)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


# ----------------------------------------------------------------------------------------------- plots
class Plots:
    """matplotlib figures as inline <img> tags; plots are skipped (with a note) when matplotlib is missing."""

    def __init__(self):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            self.plt = plt
        except ImportError:
            self.plt = None

    @property
    def ok(self) -> bool:
        return self.plt is not None

    def figure(self, ncols: int = 1, width: float = 5.0, height: float = 3.4):
        fig, axes = self.plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
        return fig, list(axes[0])

    def img(self, fig, alt: str) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        self.plt.close(fig)
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'

    def missing(self) -> str:
        return '<p class="note">Plots need matplotlib: <code>pip install "rlhfkit[plot]"</code>.</p>'


def method_of(name: str) -> str:
    n = name.lower()
    for m in ("base", "sft", "ppo", "dpo", "grpo", "rloo", "bon", "best"):
        if n.startswith(m) or f"/{m}" in n or f"_{m}" in n:
            return "bon" if m == "best" else m
    return "other"


COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "ppo": "#d62728", "dpo": "#2ca02c", "bon": "#9467bd",
          "grpo": "#ff7f0e", "rloo": "#8c564b", "other": "#17becf"}



CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 0 auto; padding: 24px; line-height: 1.45; background: #fff; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #e3e3e3; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 14px 0 4px 0; font-size: 1.02em; }
.sub { color: #666; margin-top: 0; } .note { color: #666; font-size: 0.92em; } .ok { color: #2a7a2a; }
nav { background: #f5f7fa; padding: 8px 12px; border-radius: 6px; font-size: 0.92em; }
nav a { margin-right: 12px; color: #1f5fa8; text-decoration: none; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; } table.small { font-size: 0.82em; }
table.samples td { max-width: 460px; } .text { white-space: pre-wrap; word-break: break-word; }
.resp { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.9em; }
.small { font-size: 0.85em; color: #555; }
ol.steps { padding-left: 22px; } ol.steps > li { margin-bottom: 10px; } ol.steps p { margin: 2px 0; color: #444; }
.secs { font-weight: normal; color: #888; font-size: 0.85em; margin-left: 6px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""

