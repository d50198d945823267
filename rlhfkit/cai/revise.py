"""`rlhfkit cai revise`: the supervised stage of Constitutional AI (SL-CAI, Bai et al. 2022, Sec. 3): each response
is critiqued against a principle and rewritten, principle after principle, and the final revisions become SFT data
in TRL's prompt/completion format.

Revisers:
- ``rule``   the built-in world's rule-based reviser (`rlhfkit.world.critic.revise`): for each principle with a
             `rule`, it finds the violation in the response text, writes a critique sentence and fixes it (drops
             flattery and filler, replaces a wrong or sycophantic answer with the one worked out from the request,
             a made-up answer with "I don't know.", harmful help with a refusal);
- ``model``  a causal LM (`--model`), as in the paper: the conversation (prompt, response) followed by the
             principle's critique request, the model's critique, the revision request and the model's revision,
             batched through `generate` (greedy by default). Needs a model that follows instructions: a tiny or
             untuned model writes noise, which is what its revisions will then teach.

Input rows: {"prompt", "response"}, {"prompt", "completion"}, or candidates {"prompt", "responses": [...]} (each
response revised). Output rows: {"prompt", "completion": the revision, "original", "critiques": [{"principle",
"critique"}], "revised": bool, ...input columns}; `rlhfkit sft --data` takes them unchanged.

    rlhfkit cai revise --input candidates.jsonl --output sl_cai.jsonl
    rlhfkit cai revise --input candidates.jsonl --reviser model --model runs/helpful-sft --principles-per-response 1
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit.data import DataError
from rlhfkit.cai import constitution as constitution_lib
from rlhfkit.cai.rows import as_completion, check_text, prompt_rows, prompt_text, require_world_prompt, response_text

OWN = ("prompt", "response", "completion", "responses", "finished")


@dataclass
class Config:
    input: str = ""
    """Input JSONL: {"prompt", "response"}, {"prompt", "completion"} or candidates {"prompt", "responses": [...]}."""
    output: str = "sl_cai.jsonl"
    """Output JSONL: TRL prompt/completion rows (the revisions) plus original, critiques, revised."""
    constitution: str = ""
    """Constitution YAML (default: the one shipped with rlhfkit)."""
    reviser: Literal["rule", "model"] = "rule"
    """"rule": the built-in world's rule-based reviser (world prompts only); "model": critique and revise with
    --model."""
    model: str = ""
    """reviser=model: a local directory or hub id of a causal LM (with a chat template, or a plain transcript is
    used)."""
    principles_per_response: int = 0
    """Principles applied to each response: 0 = all, in the constitution's order; N = N drawn at random per
    response (Bai et al. draw one per revision step)."""
    keep_unrevised: bool = True
    """Keep responses no principle changed (they are already good SFT targets); off: only revised ones."""
    max_new_tokens: int = 64
    """reviser=model: tokens per critique and per revision."""
    temperature: float = 0.0
    """reviser=model: sampling temperature (0: greedy)."""
    batch_size: int = 16
    """reviser=model: sequences per generation batch."""
    seed: int = 0
    """Seed of the principle draws and of sampling."""
    limit: int = 0
    """Revise only the first N input rows (0: all)."""
    trust_remote_code: bool = False
    """reviser=model: allow model code from the hub."""

    def validate(self) -> None:
        if not self.input:
            raise ValueError("--input is required")
        if self.reviser not in ("rule", "model"):
            raise ValueError(f"--reviser must be rule or model, got {self.reviser!r}")
        if self.reviser == "model" and not self.model:
            raise ValueError("--reviser model needs --model")
        if self.principles_per_response < 0 or self.limit < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("principles_per_response, limit >= 0; max_new_tokens, batch_size >= 1")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")


def read_items(path: str, limit: int = 0) -> list[dict]:
    """One item per response to revise: {"row", "where", "prompt_text", "response"}."""
    items = []
    for where, row in prompt_rows(path, limit):
        if "responses" in row:
            if not isinstance(row["responses"], list) or not row["responses"]:
                raise DataError(f"{where}: responses: must be a non-empty list")
            resp = [(f"responses[{k}]", r) for k, r in enumerate(row["responses"])]
        elif "response" in row or "completion" in row:
            key = "response" if "response" in row else "completion"
            resp = [(key, row[key])]
        else:
            raise DataError(f"{where}: <row>: needs response, completion or responses; has {sorted(row)}")
        for name, r in resp:
            check_text(r, f"{where}: {name}")
            items.append({"row": row, "where": where, "prompt_text": prompt_text(row["prompt"]),
                          "response": response_text(r)})
    return items


def _principles_for(const, n: int, rng: random.Random, need_rule: bool) -> list:
    pool = [p for p in const.principles if p.rule or not need_rule]
    return pool if n == 0 else rng.sample(pool, min(n, len(pool)))


def revise_rule(items: list[dict], const, per_response: int, seed: int) -> list[tuple[str, list[dict]]]:
    from rlhfkit.world import critic

    rng = random.Random(f"rlhfkit-cai:{seed}:principles")
    out = []
    for it in items:
        require_world_prompt(it["prompt_text"], it["where"], "--reviser model")
        principles = _principles_for(const, per_response, rng, need_rule=True)
        by_rule = {p.rule: p.name for p in principles}
        revised, used = critic.revise(it["prompt_text"], it["response"], [p.rule for p in principles])
        out.append((revised, [{"principle": by_rule[f.rule], "critique": f.critique} for f in used]))
    return out


def revise_model(items: list[dict], const, cfg: Config) -> list[tuple[str, list[dict]]]:
    """Bai et al.'s loop, batched across items: per step, every item's critique, then every item's revision."""
    import torch

    from rlhfkit.rollout import generate
    from rlhfkit import models

    tok = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = models.load_causal_lm(cfg.model, tok, cfg.trust_remote_code).to(models.inference_device()).eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    rng = random.Random(f"rlhfkit-cai:{cfg.seed}:principles")
    plans = [_principles_for(const, cfg.principles_per_response, rng, need_rule=False) for _ in items]
    chat = bool(getattr(tok, "chat_template", None))

    def encode(messages: list[dict]) -> list[int]:
        if chat:
            return data_lib.encode_prompt(tok, messages)
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
        return tok(text)["input_ids"]

    def complete(convs: list[list[dict]]) -> list[str]:
        texts: list[str] = []
        for s in range(0, len(convs), cfg.batch_size):
            ids = [encode(c) for c in convs[s : s + cfg.batch_size]]
            out = generate.sample(model, ids, tok.eos_token_id, tok.pad_token_id, cfg.max_new_tokens,
                                  cfg.temperature, 0, 1.0, gen)
            texts += [t.strip() for t in out.texts(tok)]
        return texts

    current = [it["response"] for it in items]
    critiques: list[list[dict]] = [[] for _ in items]
    for step in range(max(map(len, plans), default=0)):
        todo = [k for k in range(len(items)) if step < len(plans[k])]
        convs = [[{"role": "user", "content": items[k]["prompt_text"]},
                  {"role": "assistant", "content": current[k]},
                  {"role": "user", "content": plans[k][step].critique}] for k in todo]
        crit = complete(convs)
        for c, k, text in zip(convs, todo, crit):
            c += [{"role": "assistant", "content": text}, {"role": "user", "content": plans[k][step].revision}]
        revs = complete(convs)
        for k, text, rev in zip(todo, crit, revs):
            critiques[k].append({"principle": plans[k][step].name, "critique": text})
            if rev:
                current[k] = rev
    return list(zip(current, critiques))


def run(cfg: Config) -> dict:
    const = constitution_lib.load(cfg.constitution or None)
    items = read_items(cfg.input, cfg.limit)
    results = (revise_rule(items, const, cfg.principles_per_response, cfg.seed) if cfg.reviser == "rule"
               else revise_model(items, const, cfg))
    rows = []
    for it, (revised, crits) in zip(items, results):
        changed = revised != it["response"]
        if not changed and not cfg.keep_unrevised:
            continue
        prompt = it["row"]["prompt"]
        extra = {k: v for k, v in it["row"].items() if k not in OWN}
        rows.append({**extra, "prompt": prompt, "completion": as_completion(prompt, revised),
                     "original": it["response"], "critiques": crits, "revised": changed})
    out = data_lib.write_jsonl(rows, cfg.output)
    config_lib.save(cfg, Path(str(out) + ".config.yaml"))
    counts = {"responses": len(items), "revised": sum(r["revised"] for r in rows), "rows": len(rows),
              "output": str(out)}
    print("cai revise: " + json.dumps(counts))
    return counts
