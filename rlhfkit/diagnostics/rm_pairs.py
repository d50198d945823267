"""Reward models on pairs of one prompt's samples, the measurement of `rlhfkit loop`'s step 3.

A candidates row is {"prompt", "responses": [K responses]}; a pair is (group, better, worse): response indices of
row `group`, ordered by people's or simulated annotators' labels (`label_pairs`) or by a gold judge (`gold_order`,
pairs it scores equal left out). `rm_accuracy` measures each reward model, or each side's replicas (models trained
on the same labels with other seeds), on the pairs from their scores, and the paired change from "before" (and
"first") to "after", with a bootstrap over prompts and replicas; `agreement` is how often the labels themselves
agree with gold. `measure` loads each model once and scores each response once for all of it."""

from __future__ import annotations

from typing import Any


def gold_scores(gold: str, cands: list[dict], groups: list[int]) -> dict[tuple[int, int], float] | None:
    """The gold judge's (spec package.module:function) score of every response of the candidates rows `groups`,
    keyed (group, response); None without a gold judge ("")."""
    if not gold:
        return None
    from rlhfkit.diagnostics.evaluate import Judge, call_judge

    judge = Judge.load(gold)
    items = [(g, i) for g in groups for i in range(len(cands[g]["responses"]))]
    scores, _ = call_judge(judge.fn, [cands[g]["prompt"] for g, _ in items],
                           [cands[g]["responses"][i] for g, i in items])
    return dict(zip(items, scores))


def gold_order(gold: dict[tuple[int, int], float], cands: list[dict], groups: list[int]) -> list[tuple[int, int, int]]:
    """(group, i, j) for every pair of responses that the gold judge orders (equal scores left out), i the better."""
    out = []
    for g in groups:
        n = len(cands[g]["responses"])
        for i in range(n):
            for j in range(i + 1, n):
                if gold[g, i] != gold[g, j]:
                    out.append((g, i, j) if gold[g, i] > gold[g, j] else (g, j, i))
    return out


def agreement(gold: dict[tuple[int, int], float], pairs: list[tuple[int, int, int]]) -> dict:
    """How often the labels' chosen response (pairs: group, chosen, rejected) is gold's better one, over the pairs
    gold orders, with a 95% Wilson interval: the best a reward model that learnt the labels could score in gold
    order, roughly."""
    from rlhfkit.diagnostics.metrics import wilson_interval

    decided = [gold[g, c] > gold[g, r] for g, c, r in pairs if gold[g, c] != gold[g, r]]
    if not decided:
        return {"n": 0}
    low, high = wilson_interval(sum(decided), len(decided))
    return {"accuracy": sum(decided) / len(decided), "low": low, "high": high, "n": len(decided)}


def model_scores(rm_dir: str, cands: list[dict], items: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """The reward model's score of each (group, response) item of the candidates rows, in one load and pass."""
    from rlhfkit.models.rewards import load_reward

    out = load_reward(rm_dir)([cands[g]["prompt"] for g, _ in items], [cands[g]["responses"][i] for g, i in items])
    return dict(zip(items, out["score"].tolist()))


def pair_items(*pair_lists: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The (group, response) items the pairs of every list compare, each once."""
    return sorted({(g, i) for pairs in pair_lists for g, a, b in pairs for i in (a, b)})


def pair_correct(score: dict[tuple[int, int], float], pairs: list[tuple[int, int, int]]) -> list[float]:
    """1 where the scores put the better response of a (group, better, worse) pair higher, 0.5 on an exact tie,
    else 0."""
    return [1.0 if score[g, a] > score[g, b] else 0.5 if score[g, a] == score[g, b] else 0.0 for g, a, b in pairs]


def label_pairs(rows: list[dict], cands: list[dict]) -> list[tuple[int, int, int]]:
    """(group, chosen, rejected) response indices of held-out preference rows."""
    from rlhfkit import data as data_lib

    out = []
    for r in rows:
        resp = [data_lib.completion_text(x) for x in cands[r["group"]]["responses"]]
        c, j = data_lib.completion_text(r["chosen"]), data_lib.completion_text(r["rejected"])
        if c in resp and j in resp and c != j:
            out.append((r["group"], resp.index(c), resp.index(j)))
    return out


def rm_accuracy(scores: dict[str, list[dict[tuple[int, int], float]]], pairs: list[tuple[int, int, int]]) -> dict:
    """Each reward model's accuracy on the pairs from its replicas' scores (`model_scores`), the mean over them
    (`replicas`: each one's), with a 95% Wilson interval over the pairs; and the paired change from "before" (and
    "first") to "after" with a 95% bootstrap interval that resamples prompts (pairs of one prompt are correlated)
    and each side's replicas."""
    from rlhfkit.diagnostics.metrics import clustered_paired_bootstrap, wilson_interval

    if not pairs:
        return {"n": 0}
    correct = {name: [pair_correct(sc, pairs) for sc in reps] for name, reps in scores.items()}
    out: dict[str, Any] = {"n": len(pairs), "prompts": len({g for g, _, _ in pairs})}
    for name, reps in correct.items():
        total = sum(map(sum, reps)) / len(reps)
        low, high = wilson_interval(total, len(pairs))
        out[name] = {"accuracy": total / len(pairs), "low": low, "high": high,
                     "replicas": [sum(c) / len(c) for c in reps]}
    groups = [g for g, _, _ in pairs]
    for key, frm in (("change", "before"), ("change_from_first", "first")):
        if frm in correct and "after" in correct:
            out[key] = clustered_paired_bootstrap(correct[frm], correct["after"], groups, seed=0)
    return out


def measure(gold_spec: str, dirs: dict[str, list[str]], cands: list[dict], pairs: list[tuple[int, int, int]],
            groups: list[int]) -> dict:
    """The reward models `dirs` (name -> its replicas' directories) on the labelled pairs (group, chosen, rejected)
    of the candidates rows, and, with a gold judge, on every pair of the rows `groups` that gold orders, with the
    labels' own agreement with gold. Each model is loaded and scores each response once for both."""
    gold = gold_scores(gold_spec, cands, groups)
    ordered = gold_order(gold, cands, groups) if gold is not None else []
    items = pair_items(pairs, ordered)
    scores = {name: [model_scores(d, cands, items) for d in ds] for name, ds in dirs.items()} if items else {}
    res = {"labels": rm_accuracy(scores, pairs)}
    if gold is not None:
        res["gold"] = rm_accuracy(scores, ordered)
        res["labels_vs_gold"] = agreement(gold, pairs)
    return res
