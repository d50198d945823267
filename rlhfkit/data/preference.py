"""DPO's and KTO's examples from preference rows: a prompt and the two completions that attend to it.

Paired rows (prompt, chosen, rejected) give (chosen, rejected). KTO (Ethayarajh et al. 2024) trains on unpaired rows
(prompt, completion, label); paired rows are unpaired first (each pair -> one desirable + one undesirable example, as
TRL's unpair_preference_dataset), and each example's second completion is another example's (`mismatched_partners`),
for the reference point z0. A prompt is cut from the left once for both its completions, so each fits max_length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit import data as data_lib


@dataclass
class Example:
    """A prompt and the completions that attend to it: (chosen, rejected) for pairs, (completion, mismatched
    completion for KTO's reference point) for unpaired data. `label`: KTO's desirable flag (None for pairs)."""

    prompt: list[int]
    completions: tuple[list[int], list[int]]
    label: bool | None = None


def fit(prompt: list[int], completions: list[list[int]], max_length: int, max_prompt_length: int,
        counter: dict) -> tuple[list[int], list[list[int]]]:
    """One prompt cut for all completions (they share it), so each prompt + completion fits max_length: the prompt
    is cut from the LEFT first, a completion from the right only if it alone is too long. Every cut is counted."""
    longest = max(completions, key=len)
    p, _ = data_lib.truncate_pair(prompt, longest, max_length, max_prompt_length)
    if len(p) < len(prompt):
        data_lib._count(counter, "prompt_truncated")
    room = max_length - len(p)
    out = []
    for c in completions:
        if len(c) > room:
            c = c[:room]
            data_lib._count(counter, "completion_truncated")
        out.append(c)
    return p, out


def unpair(rows: list[dict]) -> list[dict]:
    """Preference rows -> unpaired rows: each pair gives (prompt, chosen, True) and (prompt, rejected, False),
    as TRL's unpair_preference_dataset (interleaved here; order is irrelevant after shuffling)."""
    out = []
    for row in rows:
        prompt, chosen, rejected = data_lib.preference_parts(row)
        out += [{"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False}]
    return out


def mismatched_partners(n: int, seed: int) -> list[int]:
    """A fixed derangement: example i borrows the completion of partner[i] != i for KTO's reference point. Fixed
    per dataset (not per batch, as TRL) so the reference log-probs of the mismatched pairs can be cached."""
    if n < 2:
        raise ValueError("kto needs at least 2 examples")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = order[(k + 1) % n]
    return partner


def tokenise(cfg, tokenizer, rows: list[dict], counter: dict) -> list[Example]:
    """Rows -> one `Example` per pair, or per unpaired row for an unpaired loss (KTO: its completion, and a
    mismatched partner's for z0; paired rows are unpaired first), every cut counted in `counter`. An empty prompt
    becomes [eos]. `cfg` (a `dpo.Config`) gives unpaired, max_length, max_prompt_length, seed, and data and loss
    for the error when a paired loss gets unpaired rows."""
    examples = []
    if cfg.unpaired:
        if "chosen" in rows[0]:
            rows = unpair(rows)
        comps = [data_lib.encode_completion(tokenizer, r["prompt"], r["completion"]) for r in rows]
        partner = mismatched_partners(len(rows), cfg.seed)
        for i, r in enumerate(rows):
            p, cs = fit(data_lib.encode_prompt(tokenizer, r["prompt"]), [comps[i], comps[partner[i]]],
                        cfg.max_length, cfg.max_prompt_length, counter)
            examples.append(Example(p or [tokenizer.eos_token_id], (cs[0], cs[1]), bool(r["label"])))
        return examples
    if "chosen" not in rows[0]:
        raise data_lib.DataError(f"{cfg.data}: loss {cfg.loss} needs paired preference rows (prompt, chosen, "
                                 "rejected); unpaired rows (prompt, completion, label) train with loss kto")
    for r in rows:
        prompt, chosen, rejected = data_lib.preference_parts(r)
        p, cs = fit(data_lib.encode_prompt(tokenizer, prompt), [data_lib.encode_completion(tokenizer, prompt, chosen),
                    data_lib.encode_completion(tokenizer, prompt, rejected)], cfg.max_length, cfg.max_prompt_length,
                    counter)
        examples.append(Example(p or [tokenizer.eos_token_id], (cs[0], cs[1])))
    return examples
