"""Inter-annotator agreement (Cohen's and Fleiss' kappa) and agreement with the world's gold judge.

A label's category is expressed in terms of the *responses*, not the screen positions, so two annotators who
saw the pair in opposite left/right order but preferred the same response agree:
  pair item:    "r0" / "r1" (the preferred response index), "tie", "both_bad"
  ranked item:  "r<i>" for the response ranked first.

Cohen's kappa (two raters, same items):  k = (p_o - p_e) / (1 - p_e),  p_e = sum_c p_a(c) p_b(c).
Fleiss' kappa (many raters): with n_ic raters putting item i in category c and n_i = sum_c n_ic,
  P_i = (sum_c n_ic^2 - n_i) / (n_i (n_i - 1)),  P_bar = mean_i P_i,  p_c = sum_i n_ic / sum_i n_i,
  P_e = sum_c p_c^2,  k = (P_bar - P_e) / (1 - P_e).
With equal n_i this is Fleiss (1971); unequal n_i (items with >= 2 raters) is the usual generalisation.
When every rating is the same category, p_e = 1 and kappa is undefined: we return None.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from typing import Any, Hashable, Sequence


def cohens_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    if len(a) != len(b):
        raise ValueError("cohens_kappa: the two raters must rate the same items")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """counts[i][c] = number of raters who put item i in category c. Items with fewer than 2 raters are ignored."""
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    n_cat = max(len(r) for r in rows)
    rows = [r + [0] * (n_cat - len(r)) for r in rows]
    p_items = []
    for r in rows:
        n_i = sum(r)
        p_items.append((sum(x * x for x in r) - n_i) / (n_i * (n_i - 1)))
    p_bar = sum(p_items) / len(p_items)
    total = sum(sum(r) for r in rows)
    p_e = sum((sum(r[c] for r in rows) / total) ** 2 for c in range(n_cat))
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def category(label: Any) -> str | None:
    """The response-level category of a stored label (None for a skip)."""
    choice = label["choice"]
    order = json.loads(label["shown_order"])
    if choice == "left":
        return f"r{order[0]}"
    if choice == "right":
        return f"r{order[1]}"
    if choice in ("tie", "both_bad"):
        return choice
    if choice == "rank" and label["ranking"]:
        return f"r{json.loads(label['ranking'])[0]}"
    return None


def agreement_report(labels: Sequence[Any], min_overlap: int = 1) -> dict:
    """Cohen's kappa for every annotator pair with >= min_overlap shared items, and Fleiss' kappa over items
    with >= 2 annotators. `labels` are rows with item_id, annotator, choice, shown_order, ranking."""
    by_item: dict[int, dict[str, str]] = defaultdict(dict)
    for lab in labels:
        c = category(lab)
        if c is not None:
            by_item[lab["item_id"]][lab["annotator"]] = c
    annotators = sorted({a for d in by_item.values() for a in d})
    pairs = []
    for x, y in itertools.combinations(annotators, 2):
        shared = [i for i, d in by_item.items() if x in d and y in d]
        if len(shared) >= min_overlap:
            k = cohens_kappa([by_item[i][x] for i in shared], [by_item[i][y] for i in shared])
            pairs.append({"a": x, "b": y, "items": len(shared), "kappa": k})
    cats = sorted({c for d in by_item.values() for c in d.values()})
    multi = [d for d in by_item.values() if len(d) >= 2]
    counts = [[Counter(d.values())[c] for c in cats] for d in multi]
    return {
        "items_with_2plus": len(multi),
        "fleiss_kappa": fleiss_kappa(counts),
        "cohen": pairs,
    }


def gold_agreement(items: dict[int, Any], labels: Sequence[Any]) -> dict | None:
    """Agreement of human pair choices with `rlhfkit.world`'s gold judge on world items (rows with a "kind").

    The gold preference is the response with the higher gold "total" (equal totals: gold says tie, and the label
    is left out). Returns None when `rlhfkit.world` is not importable or there are no world items."""
    world_items = {i: it for i, it in items.items() if it["kind"]}
    if not world_items:
        return None
    try:
        from rlhfkit.world import gold  # lazy: the world module is optional for the app
    except Exception:
        return None
    from rlhfkit.app.items import message_text, prompt_user_text

    totals: dict[int, list[float]] = {}
    agree = n = 0
    per_annotator: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for lab in labels:
        it = world_items.get(lab["item_id"])
        cat = category(lab)
        if it is None or cat is None or not cat.startswith("r"):
            continue
        if lab["item_id"] not in totals:
            prompt = prompt_user_text(json.loads(it["prompt_json"]))
            try:
                totals[lab["item_id"]] = [
                    float(gold(prompt, message_text(r))["total"]) for r in json.loads(it["responses_json"])
                ]
            except Exception:  # a "kind" column on a prompt the world cannot parse: not a world item after all
                totals[lab["item_id"]] = []
        t = totals[lab["item_id"]]
        if not t:
            continue
        best = max(t)
        if t.count(best) > 1:
            continue
        hit = int(int(cat[1:]) == t.index(best))
        agree += hit
        n += 1
        per_annotator[lab["annotator"]][0] += hit
        per_annotator[lab["annotator"]][1] += 1
    return {
        "labels": n,
        "agreement": agree / n if n else None,
        "per_annotator": {a: {"labels": m, "agreement": h / m} for a, (h, m) in per_annotator.items()},
    }
