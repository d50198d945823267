"""Rounds of labelling in one app database, for `rlhfkit loop --label-source app`: a round's candidates go in as
items whose ids share a prefix (`push`), people label them in the app, and the loop counts (`labelled`) and reads
back (`export`) the labels on that round's items only. Pushing is idempotent: an item already there (same id) is
left alone, so a resumed round can push again. No torch; no SQL outside db.py."""

from __future__ import annotations

from typing import Any

from rlhfkit.app.db import Store
from rlhfkit.app.export import export_rows
from rlhfkit.app.items import parse_rows


def item_id(prefix: str, index: int) -> str:
    """The item id of candidates row `index` of a round."""
    return f"{prefix}{index}"


def push(store: Store, rows: list[dict[str, Any]], prefix: str) -> int:
    """Add candidates rows ({"prompt", "responses": [...]}, ...) as items `prefix0`, `prefix1`, ...; returns how many
    were new."""
    keep = ("prompt", "responses", "kind")
    parsed, warnings = parse_rows([{**{k: r[k] for k in keep if k in r}, "id": item_id(prefix, i)}
                                   for i, r in enumerate(rows)])
    if warnings:
        raise ValueError(f"app items: {warnings[0]}")
    return store.add_items(parsed)


def labelled(store: Store, prefix: str) -> int:
    """Live labels (skips and undone ones excluded) on the items whose id starts with `prefix`."""
    return store.count_live_labels(prefix)


def export(store: Store, prefix: str, rank_pairs: str = "all") -> list[dict[str, Any]]:
    """Preference rows of the labels on `prefix` items (ties and "both bad" dropped), each with `group`: the index
    of its candidates row."""
    out = []
    for row in export_rows(store, ties="drop", rank_pairs=rank_pairs):
        ext = str(row["item_id"])
        if ext.startswith(prefix) and ext[len(prefix):].isdigit():
            out.append({**row, "group": int(ext[len(prefix):])})
    return out
