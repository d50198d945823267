"""`rlhfkit cai label`: preference labels from an AI judge (RLAIF, Lee et al. 2023; the preference-model stage of
Constitutional AI, Bai et al. 2022), written in the labelling app's export format so `rlhfkit rm` and
`rlhfkit dpo` take them unchanged.

Input rows, one JSON object per line (other columns are copied to every pair from the row):
- candidates from `rlhfkit sample`: {"prompt", "responses": [r1, ..., rK]}, K >= 2; pairs: all K(K-1)/2
  (`--pairs all`) or adjacent ones (0,1), (1,2), ... (`--pairs adjacent`);
- preference rows (the app's export, `rlhfkit world label`): {"prompt", "chosen", "rejected"}: re-labelled by
  the judge, which is how a judge is set against the humans on the same pairs;
- {"prompt", "response_a", "response_b"}.

Output rows: {"prompt", "chosen", "rejected", "annotator": "judge:<rule|hf|http>", "rationale": null,
"item_id", "label_id", "outcome": "preference" | "tie", "pair": [i, j], "group", "p_a", "p_ab", "p_ba",
"consistent", ...input columns}. Response i is "a" (shown first in the forward order); `p_a` is the debiased
P(a better), `p_ab` / `p_ba` the two orders' verdicts as P(a better); chosen is a when p_a > 0.5. A pair with
p_a exactly 0.5 is a tie: dropped, or kept with outcome "tie" and chosen = a (`--ties keep`).

    rlhfkit cai label --input candidates.jsonl --output ai_prefs.jsonl              # rule-based judge
    rlhfkit cai label --input pairs.jsonl --judge hf --judge-model runs/sft
    OPENAI_API_KEY=... rlhfkit cai label --input pairs.jsonl --judge http --base-url https://api.openai.com/v1 \\
        --judge-model gpt-4o-mini --requests-per-second 5
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit.data import DataError
from rlhfkit.cai import constitution as constitution_lib
from rlhfkit.cai.options import JudgeConfig, build_judge
from rlhfkit.cai.rows import as_completion, check_text, prompt_rows, prompt_text, require_world_prompt, response_text

CHUNK = 256  # pairs per judge call: progress lines, and a bounded loss if an in-memory judge is interrupted
OWN = ("prompt", "responses", "finished", "chosen", "rejected", "response_a", "response_b")


@dataclass
class Config(JudgeConfig):
    input: str = ""
    """Input JSONL: candidates {"prompt", "responses": [...]}, preference rows {"prompt", "chosen", "rejected"} or
    {"prompt", "response_a", "response_b"}."""
    output: str = "ai_preferences.jsonl"
    """Output JSONL of preference rows (the labelling app's export format; written atomically)."""
    pairs: Literal["all", "adjacent"] = "all"
    """Candidates with K > 2 responses: all K(K-1)/2 pairs, or adjacent ones (K-1)."""
    ties: Literal["drop", "keep"] = "drop"
    """Pairs the judge finds equal: dropped, or kept with outcome "tie"."""
    limit: int = 0
    """Label only the first N input rows (0: all)."""

    def validate(self) -> None:
        if not self.input:
            raise ValueError("--input is required")
        if self.pairs not in ("all", "adjacent") or self.ties not in ("drop", "keep"):
            raise ValueError("--pairs must be all or adjacent, --ties drop or keep")
        if self.limit < 0:
            raise ValueError("--limit must be >= 0")
        self.validate_judge()


def read_pairs(path: str, pairs: str = "all", limit: int = 0) -> list[dict]:
    """Every pair to judge: {"row", "group", "i", "j", "a", "b", "prompt_text", "a_text", "b_text"}."""
    out = []
    for group, (where, row) in enumerate(prompt_rows(path, limit)):
        if "responses" in row:
            resp = row["responses"]
            if not isinstance(resp, list) or len(resp) < 2:
                raise DataError(f"{where}: responses: must be a list of at least 2 responses")
            idx = ([(i, j) for i in range(len(resp)) for j in range(i + 1, len(resp))] if pairs == "all"
                   else [(i, i + 1) for i in range(len(resp) - 1)])
            names = [f"responses[{k}]" for k in range(len(resp))]
        elif "chosen" in row and "rejected" in row:
            resp, idx, names = [row["chosen"], row["rejected"]], [(0, 1)], ["chosen", "rejected"]
        elif "response_a" in row and "response_b" in row:
            resp, idx, names = [row["response_a"], row["response_b"]], [(0, 1)], ["response_a", "response_b"]
        else:
            raise DataError(f"{where}: <row>: needs responses, chosen + rejected, or response_a + response_b; "
                            f"has {sorted(row)}")
        for r, name in zip(resp, names):
            check_text(r, f"{where}: {name}")
        p = prompt_text(row["prompt"])
        for i, j in idx:
            out.append({"row": row, "group": group, "where": where, "i": i, "j": j, "a": resp[i], "b": resp[j], "prompt_text": p,
                        "a_text": response_text(resp[i]), "b_text": response_text(resp[j])})
    return out


def check_world_prompts(pairs: list[dict]) -> None:
    """The rule-based judge reads built-in world prompts only: say which line is not one before judging any."""
    for x in pairs:
        require_world_prompt(x["prompt_text"], x["where"], "--judge hf or --judge http")


def label_pairs(judge, pairs: list[dict], ties: str = "drop", swap: bool = True,
                progress: bool = True) -> tuple[list[dict], dict]:
    """Judge the pairs; returns (preference rows, counts)."""
    rows, n_ties = [], 0
    for s in range(0, len(pairs), CHUNK):
        chunk = pairs[s : s + CHUNK]
        v = judge.compare_detailed([x["prompt_text"] for x in chunk], [x["a_text"] for x in chunk],
                                   [x["b_text"] for x in chunk], swap=swap)
        for k, x in enumerate(chunk):
            p = v.p[k]
            tie = p == 0.5
            n_ties += tie
            if tie and ties == "drop":
                continue
            a_wins = p >= 0.5
            prompt = x["row"]["prompt"]
            extra = {key: val for key, val in x["row"].items() if key not in OWN}
            rows.append({**extra, "prompt": prompt,
                         "chosen": as_completion(prompt, x["a"] if a_wins else x["b"]),
                         "rejected": as_completion(prompt, x["b"] if a_wins else x["a"]),
                         "annotator": f"judge:{judge.name}", "rationale": None,
                         "item_id": x["row"].get("item_id", x["row"].get("id", x["group"])), "label_id": len(rows),
                         "outcome": "tie" if tie else "preference", "pair": [x["i"], x["j"]], "group": x["group"],
                         "p_a": p, "p_ab": v.p_ab[k], "p_ba": v.p_ba[k], "consistent": v.consistent[k]})
        if progress and len(pairs) > CHUNK:
            print(f"cai label: {min(s + CHUNK, len(pairs))}/{len(pairs)} pairs judged")
    counts = {"pairs": len(pairs), "labels": len(rows), "ties": n_ties,
              "position_consistency": judge.consistency if swap else None}
    stats = getattr(judge, "stats", None)
    if stats:
        counts["http"] = dict(stats)
    return rows, counts


def run(cfg: Config) -> dict:
    constitution_lib.load(cfg.constitution or None)  # a bad constitution fails before any data or model is read
    pairs = read_pairs(cfg.input, cfg.pairs, cfg.limit)
    if cfg.judge == "rule":
        check_world_prompts(pairs)
    judge = build_judge(cfg, default_cache=cfg.output + ".judge-cache.jsonl")
    rows, counts = label_pairs(judge, pairs, cfg.ties, cfg.swap)
    out = data_lib.write_jsonl(rows, cfg.output)
    config_lib.save(cfg, Path(str(out) + ".config.yaml"))
    counts["output"] = str(out)
    print("cai label: " + json.dumps(counts))
    return counts
