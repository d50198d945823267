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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit.rollout import generate
from rlhfkit import models


@dataclass
class Config:
    model: str = ""
    """Policy to sample from: a local directory or hub id of a causal LM."""
    tokenizer: str = ""
    """Tokenizer (default: the model's)."""
    prompts: str = ""
    """Prompt file or hub id: rows with a `prompt` column (string or messages); other columns are copied."""
    output: str = "candidates.jsonl"
    """Output candidates JSONL: {"prompt", "responses": [...], "finished": [...], ...input columns}."""
    split: str = "train"
    """Split for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt."""
    num_responses: int = 4
    """K: responses drawn per prompt (at least 2 to make pairs)."""
    max_new_tokens: int = 64
    """Maximum tokens generated per response."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy, which makes the K responses identical)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: int = 0
    """Top-k filtering (0: off)."""
    batch_size: int = 64
    """Sequences per generation batch."""
    max_prompt_length: int = 512
    """Prompts longer than this are cut from the left (counted)."""
    seed: int = 42
    """Sampling seed: the same seed gives the same candidates."""
    limit: int = 0
    """Use only the first N prompts (0: all)."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def validate(self) -> None:
        if not self.model or not self.prompts:
            raise ValueError("model and prompts are required")
        if self.num_responses < 2:
            raise ValueError(f"num_responses must be >= 2 to make pairs, got {self.num_responses}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


def generate_config(cfg: Config) -> generate.Config:
    return generate.Config(model=cfg.model, tokenizer=cfg.tokenizer, prompts=cfg.prompts, output=cfg.output,
                           num_samples=cfg.num_responses, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, batch_size=cfg.batch_size,
                           max_prompt_length=cfg.max_prompt_length, seed=cfg.seed)


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
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code).to(models.inference_device())
    rows = data_lib.load_rows(cfg.prompts, cfg.split, cfg.column_map)
    if cfg.limit:
        rows = rows[: cfg.limit]
    out_rows = candidate_rows(model, tokenizer, rows, cfg)
    out = data_lib.write_jsonl(out_rows, cfg.output)
    config_lib.save(cfg, Path(str(out) + ".config.yaml"))
    n_done = sum(sum(r["finished"]) for r in out_rows)
    print(f"sample: {len(out_rows)} prompts x {cfg.num_responses} responses ({n_done} ended with EOS) -> {out}")
    return out
