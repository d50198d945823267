"""`rlhfkit cai agreement`: how far a judge's preference labels agree with human labels and with the world's gold
judge, and the two biases that matter for AI feedback (Zheng et al. 2023, Sec. 3.3): preferring the longer response
and preferring the response shown first.

Labels are matched by content, not by row: a pair's key is its prompt text and its two response texts in sorted
order, and a label's category is which of the two sorted responses it prefers ("first" / "second", or "tie"). So
judge labels from `rlhfkit cai label` meet human labels from the labelling app's export (or `rlhfkit world label`)
whatever order either saw the pair in; a pair several humans labelled counts once per human label.

- accuracy: the share of matched labels where the judge prefers the same response (judge ties left out, counted);
- Cohen's kappa: the same agreement corrected for chance (`rlhfkit.app.agreement.cohens_kappa`);
- gold (built-in world prompts only): the gold preference is the response with the higher `world.gold` total
  (equal totals are left out); reported for the judge and, with --human, for the humans too, so one can read
  whether AI labels beat or trail the human ones;
- length preference: among labelled pairs whose responses differ in word count, the share where the preferred
  response is the longer one (judge, humans, gold side by side: gold's own share is the length preference
  an unbiased labeller would show on these pairs);
- position preference (from the judge's `p_ab` / `p_ba` columns): the mean probability that the response shown
  first wins, over both orders (0.5 = none), and the share of pairs judged alike in both orders.

    rlhfkit cai agreement --labels ai_prefs.jsonl --human human_prefs.jsonl --output agreement.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rlhfkit.data import DataError
from rlhfkit.app.agreement import cohens_kappa
from rlhfkit.cai.rows import check_text, prompt_text, read_rows, response_text


@dataclass
class Config:
    labels: str = ""
    """The judge's labels: preference rows {"prompt", "chosen", "rejected", ...} (`rlhfkit cai label` output)."""
    human: str = ""
    """Human labels in the same format (the labelling app's export, `rlhfkit world label`); optional."""
    gold: bool = True
    """Compare with the built-in world's gold judge on the pairs whose prompt is a world prompt."""
    output: str = ""
    """Write the report as JSON here (it is printed either way)."""

    def validate(self) -> None:
        if not self.labels:
            raise ValueError("--labels is required")


@dataclass(frozen=True)
class Label:
    key: str
    """JSON of [prompt text, response 1, response 2], the responses in sorted order."""
    category: str
    """"first" / "second" (the preferred one of the sorted responses) or "tie"."""
    prompt: str
    first: str
    second: str
    p_ab: float | None = None
    p_ba: float | None = None
    consistent: bool | None = None


def read_labels(path: str) -> list[Label]:
    out = []
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        for f in ("prompt", "chosen", "rejected"):
            if f not in row:
                raise DataError(f"{where}: {f}: missing (expected preference rows: prompt, chosen, rejected)")
            check_text(row[f], f"{where}: {f}")
        p, c, r = prompt_text(row["prompt"]), response_text(row["chosen"]), response_text(row["rejected"])
        if c == r:
            continue  # identical responses: nothing to prefer
        first, second = sorted((c, r))
        tie = row.get("outcome") == "tie" or row.get("tie") is True
        cat = "tie" if tie else ("first" if c == first else "second")
        # p_ab / p_ba: P(a better) with a shown first / second (`cai label` columns). Position preference needs
        # only p_ab + 1 - p_ba, the chance the first-shown response wins, whichever response a was.
        pab, pba = row.get("p_ab"), row.get("p_ba")
        if isinstance(pab, (int, float)) and isinstance(pba, (int, float)):
            pab, pba = float(pab), float(pba)
        else:
            pab = pba = None
        out.append(Label(json.dumps([p, first, second], ensure_ascii=False), cat, p, first, second, pab, pba,
                         row.get("consistent")))
    return out


def gold_category(label: Label) -> str | None:
    """"first" / "second" by the world's gold total; None when equal or the prompt is not a world prompt."""
    from rlhfkit.world import gold

    try:
        g1, g2 = gold(label.prompt, label.first)["total"], gold(label.prompt, label.second)["total"]
    except ValueError:
        return None
    return None if g1 == g2 else ("first" if g1 > g2 else "second")


def _compare(a: Iterable[tuple[str, str]]) -> dict:
    """Accuracy and kappa over (judge category, reference category) pairs; judge ties left out and counted."""
    pairs = list(a)
    decided = [(x, y) for x, y in pairs if x != "tie" and y != "tie"]
    n = len(decided)
    return {"pairs": n, "ties_left_out": len(pairs) - n,
            "accuracy": sum(x == y for x, y in decided) / n if n else None,
            "kappa": cohens_kappa([x for x, _ in decided], [y for _, y in decided]) if n else None}


def _longer_share(labels: Iterable[tuple[Label, str]]) -> dict:
    longer = n = 0
    for lab, cat in labels:
        w1, w2 = len(lab.first.split()), len(lab.second.split())
        if cat == "tie" or w1 == w2:
            continue
        n += 1
        longer += (cat == "first") == (w1 > w2)
    return {"pairs": n, "prefers_longer": longer / n if n else None}


def agreement(judge: list[Label], human: list[Label] | None = None, use_gold: bool = True) -> dict:
    """The report (see the module docstring) from already-read labels."""
    report: dict = {"judge_labels": len(judge)}
    by_key = {lab.key: lab for lab in judge}
    if human is not None:
        matched = [(by_key[h.key].category, h.category) for h in human if h.key in by_key]
        report["vs_human"] = {"human_labels": len(human), **_compare(matched)}
    if use_gold:
        gold_cat = {lab.key: gold_category(lab) for lab in [*judge, *(human or [])]}
        report["vs_gold"] = _compare((lab.category, gold_cat[lab.key]) for lab in judge if gold_cat[lab.key])
        if human is not None:
            report["human_vs_gold"] = _compare((h.category, gold_cat[h.key]) for h in human if gold_cat[h.key])
    length = {"judge": _longer_share((lab, lab.category) for lab in judge)}
    if human is not None:
        length["human"] = _longer_share((h, h.category) for h in human)
    if use_gold:
        length["gold"] = _longer_share((lab, gold_cat[lab.key]) for lab in judge if gold_cat[lab.key])
    report["length_preference"] = length
    swapped = [lab for lab in judge if lab.p_ab is not None]
    report["position_preference"] = {
        "pairs": len(swapped),
        # P(first shown wins): p_ab in the forward order, 1 - p_ba in the swapped one (b shown first)
        "first_shown_wins": (sum((lab.p_ab + 1 - lab.p_ba) / 2 for lab in swapped) / len(swapped)
                             if swapped else None),
        "consistency": (sum(bool(lab.consistent) for lab in swapped) / len(swapped)
                        if swapped and all(lab.consistent is not None for lab in swapped) else None),
    }
    return report


def run(cfg: Config) -> dict:
    report = agreement(read_labels(cfg.labels), read_labels(cfg.human) if cfg.human else None, cfg.gold)
    text = json.dumps(report, indent=2)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n")
    print(text)
    return report
