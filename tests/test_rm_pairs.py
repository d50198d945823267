"""rm_pairs: the pairs step 3 of `rlhfkit loop` measures reward models on, worked by hand."""

from __future__ import annotations

import pytest

from rlhfkit.diagnostics import rm_pairs

CANDS = [{"prompt": "p0", "responses": ["a", "b", "c"]}, {"prompt": "p1", "responses": ["x", "y"]}]
# gold: in row 0, a and c tie at 1.0 above b at 0.0; in row 1, y above x
GOLD = {(0, 0): 1.0, (0, 1): 0.0, (0, 2): 1.0, (1, 0): -1.0, (1, 1): 0.5}


def test_gold_order_keeps_the_pairs_gold_orders_better_first():
    """Row 0: (a, b) -> a better; (a, c) tie, left out; (b, c) -> c better. Row 1: (x, y) -> y better."""
    assert rm_pairs.gold_order(GOLD, CANDS, [0, 1]) == [(0, 0, 1), (0, 2, 1), (1, 1, 0)]
    assert rm_pairs.gold_order(GOLD, CANDS, [1]) == [(1, 1, 0)]


def test_agreement_counts_only_pairs_gold_decides():
    """Labelled pairs (chosen, rejected): (a, b) agrees with gold, (b, c) does not, (a, c) is a gold tie and is left
    out, (y, x) agrees: 2 of 3 decided pairs, 0.667."""
    r = rm_pairs.agreement(GOLD, [(0, 0, 1), (0, 1, 2), (0, 0, 2), (1, 1, 0)])
    assert r["n"] == 3 and r["accuracy"] == pytest.approx(2 / 3)
    assert r["low"] < 2 / 3 < r["high"]
    assert rm_pairs.agreement(GOLD, [(0, 0, 2)]) == {"n": 0}


def test_label_pairs_maps_rows_to_response_indices():
    """A row whose chosen or rejected text is not among the group's responses, or is the same text, is left out."""
    rows = [{"group": 0, "chosen": "c", "rejected": "a"}, {"group": 1, "chosen": "y", "rejected": "x"},
            {"group": 0, "chosen": "zzz", "rejected": "a"}, {"group": 1, "chosen": "x", "rejected": "x"}]
    assert rm_pairs.label_pairs(rows, CANDS) == [(0, 2, 0), (1, 1, 0)]


def test_pair_correct_and_pair_items_by_hand():
    """Scores a 1.0, b 0.0, c 1.0: (a, b) right -> 1, (b, c) wrong -> 0, (a, c) an exact tie -> 0.5. The items of
    two pair lists are each response compared, once, sorted."""
    score = {(0, 0): 1.0, (0, 1): 0.0, (0, 2): 1.0}
    assert rm_pairs.pair_correct(score, [(0, 0, 1), (0, 1, 2), (0, 0, 2)]) == [1.0, 0.0, 0.5]
    assert rm_pairs.pair_items([(0, 2, 0)], [(0, 0, 1), (1, 1, 0)]) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_without_a_gold_judge_there_are_no_gold_scores():
    assert rm_pairs.gold_scores("", CANDS, [0, 1]) is None
