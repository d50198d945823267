"""Export stored labels as TRL preference rows: {"prompt", "chosen", "rejected"} plus extra columns.

Left/right randomisation is undone: the stored `shown_order` maps screen positions back to response indices.
Extra columns: annotator, rationale, item_id (the item's id in the items file, or its content hash),
label_id, outcome ("preference" | "tie" | "both_bad"), and kind for world items.
A ranking of K responses becomes pairs: all K(K-1)/2 (default), adjacent ones, or best-vs-worst only.
Ties and "both bad" are dropped (default) or kept with outcome set (chosen/rejected then in response order).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from rlhfkit.app.db import Store

TIES = ("drop", "keep")
RANK_PAIRS = ("all", "adjacent", "best-worst")


def _as_completion(prompt: Any, response: Any) -> Any:
    # TRL conversational format: a messages prompt goes with assistant-turn lists.
    if isinstance(prompt, list) and isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return response


def export_rows(store: Store, *, ties: str = "drop", rank_pairs: str = "all") -> Iterator[dict]:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if rank_pairs not in RANK_PAIRS:
        raise ValueError(f"rank_pairs must be one of {RANK_PAIRS}, got {rank_pairs!r}")
    cache: dict[int, Any] = {}
    for lab in store.live_labels():
        it = cache.get(lab["item_id"])
        if it is None:
            it = cache[lab["item_id"]] = store.item(lab["item_id"])
        prompt = json.loads(it["prompt_json"])
        responses = json.loads(it["responses_json"])
        order = json.loads(lab["shown_order"])
        pairs: list[tuple[int, int, str]] = []
        if lab["choice"] in ("left", "right"):
            w, l = (order[0], order[1]) if lab["choice"] == "left" else (order[1], order[0])
            pairs.append((w, l, "preference"))
        elif lab["choice"] in ("tie", "both_bad"):
            if ties == "keep":
                a, b = sorted(order[:2])
                pairs.append((a, b, lab["choice"]))
        elif lab["choice"] == "rank":
            rank = json.loads(lab["ranking"])
            if rank_pairs == "all":
                pairs += [(rank[i], rank[j], "preference") for i in range(len(rank)) for j in range(i + 1, len(rank))]
            elif rank_pairs == "adjacent":
                pairs += [(rank[i], rank[i + 1], "preference") for i in range(len(rank) - 1)]
            else:
                pairs.append((rank[0], rank[-1], "preference"))
        for w, l, outcome in pairs:
            row = {
                "prompt": prompt,
                "chosen": _as_completion(prompt, responses[w]),
                "rejected": _as_completion(prompt, responses[l]),
                "annotator": lab["annotator"],
                "rationale": lab["rationale"],
                "item_id": it["ext_id"],
                "label_id": lab["id"],
                "outcome": outcome,
            }
            if it["kind"]:
                row["kind"] = it["kind"]
            yield row


def export_jsonl(store: Store, out, **kw: Any) -> int:
    """Write rows to a text stream; returns the number of rows."""
    n = 0
    for row in export_rows(store, **kw):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n
