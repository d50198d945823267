"""`rlhfkit sample`: draw K responses per prompt from a policy into a candidates file, the input of preference
labelling (`rlhfkit world label`, or the labelling app), as InstructGPT collected K = 4..9 responses per prompt.

Output rows: ``{"prompt": <as input: string or messages>, "responses": [str, ...], "finished": [bool, ...],
...other input columns}``; `finished[k]` says whether response k ended with EOS (a truncated response is still
a candidate; the labeller or a length penalty decides what it is worth). Sampling is `generate.generate_rows`
(KV cache, left-padded prompts, temperature without top-k / top-p by default), seeded.

    from rlhfkit import sample
    sample.run(sample.Config(model="runs/sft", prompts="prompts.jsonl", output="candidates.jsonl", num_responses=4))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit import data as data_lib
from rlhfkit.rollout import generate


@dataclass
class Config(generate.SamplingConfig):
    output: str = "candidates.jsonl"
    """Output candidates JSONL: {"prompt", "responses": [...], "finished": [...], ...input columns}."""
    num_responses: int = 4
    """K: responses drawn per prompt (at least 2 to make pairs; greedy sampling makes the K identical)."""

    def validate(self) -> None:
        super().validate()
        if self.num_responses < 2:
            raise ValueError(f"num_responses must be >= 2 to make pairs, got {self.num_responses}")


def generate_config(cfg: Config) -> generate.Config:
    """The same sampler settings as `rlhfkit generate` takes them, K samples per prompt."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(generate.SamplingConfig)}
    return generate.Config(**shared, num_samples=cfg.num_responses)


def candidate_rows(model, tokenizer, rows: list[dict], cfg: Config, progress: bool = True) -> list[dict[str, Any]]:
    """K responses per row, grouped back into one candidates row per prompt (input order kept)."""
    samples = generate.generate_rows(model, tokenizer, rows, generate_config(cfg), progress=progress)
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        mine = samples[i * cfg.num_responses : (i + 1) * cfg.num_responses]  # generate_rows orders by (row, k)
        cand = {k: v for k, v in row.items() if k not in ("completion", "responses", "finished")}
        cand["responses"] = [data_lib.completion_text(s["completion"]) for s in mine]
        cand["finished"] = [bool(s["finished"]) for s in mine]
        out.append(cand)
    return out


def run(cfg: Config) -> Path:
    cfg.validate()  # as the command line does (config.resolve)
    return write_candidates(cfg)


def write_candidates(cfg: Config) -> Path:
    """`run` without the check that the file alone makes pairs: the demo writes one policy's share of a candidates
    file at a time (one response each from two policies, at K = 2) and joins the shares itself."""
    generate.SamplingConfig.validate(cfg)
    model, tokenizer, rows = generate.load_inputs(cfg)
    out_rows = candidate_rows(model, tokenizer, rows, cfg)
    out = generate.write_output(cfg, out_rows)
    n_done = sum(sum(r["finished"]) for r in out_rows)
    print(f"sample: {len(out_rows)} prompts x {cfg.num_responses} responses ({n_done} ended with EOS) -> {out}")
    return out
