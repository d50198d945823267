"""The live reward model shown next to the labelling page: a linear Bradley-Terry head on bag-of-words features.

    r(y) = w . phi(y)          P(a > b) = sigmoid(r(a) - r(b))
    loss = mean_i softplus(-(r(win_i) - r(lose_i))) + lam/2 |w|^2

phi(y) is a hashed bag of lower-cased unigrams and bigrams of the response (log1p counts, signed hashing into
`dim` buckets) plus a log-length feature, scaled to unit norm. Because |phi| <= 1, each difference has norm <= 2 and
the loss gradient is (1 + lam)-Lipschitz at most (the Hessian of softplus is <= 1/4), so plain gradient descent with
step 1/(1 + lam) converges without line search.

Labels with a winner feed it: left/right choices give one pair, a ranking of K gives all K(K-1)/2 pairs; ties,
"both bad" and skips carry no order and are left out. Every 5th label (by a hash of its id, so the split never
changes as labels arrive) is held out; the panel shows held-out accuracy and held-out BT loss.

Training runs in a daemon thread, woken every `retrain_every` new labels. Only numpy: the app never imports torch.
(MiniLM sentence embeddings would need torch; they are not used in the server process. See docs/labelling.md.)
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import zlib
from typing import Any

import numpy as np

from .db import Store, message_text

_WORD = re.compile(r"\w+|[^\w\s]")


def _bucket(tok: str, dim: int) -> tuple[int, float]:
    h = zlib.crc32(tok.encode("utf-8"))
    return h % dim, (1.0 if (h >> 31) & 1 else -1.0)


def featurize_sparse(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashed bag of unigrams + bigrams + log-length, unit norm, as (indices, values) into a (dim + 1,) vector."""
    toks = _WORD.findall(text.lower())
    counts: dict[str, int] = {}
    for t in toks:
        counts[t] = counts.get(t, 0) + 1
    for a, b in zip(toks, toks[1:]):
        k = a + " " + b
        counts[k] = counts.get(k, 0) + 1
    acc: dict[int, float] = {}
    for tok, n in counts.items():
        i, sgn = _bucket(tok, dim)
        acc[i] = acc.get(i, 0.0) + sgn * math.log1p(n)
    acc[dim] = math.log1p(len(text)) / 4.0  # length: the first thing preference models learn
    idx = np.fromiter(acc.keys(), dtype=np.int64, count=len(acc))
    val = np.fromiter(acc.values(), dtype=np.float64, count=len(acc))
    norm = np.linalg.norm(val)
    return idx, (val / norm if norm > 0 else val)


def featurize(text: str, dim: int) -> np.ndarray:
    """Dense form of `featurize_sparse`. Shape (dim + 1,)."""
    v = np.zeros(dim + 1)
    idx, val = featurize_sparse(text, dim)
    v[idx] = val
    return v


def is_held_out(label_id: int) -> bool:
    return (label_id * 2654435761) % 2**32 % 5 == 0


def label_pairs(label: Any, responses: list) -> list[tuple[str, str]]:
    """(winner text, loser text) pairs implied by one stored label."""
    order = json.loads(label["shown_order"])
    texts = [message_text(r) for r in responses]
    if label["choice"] in ("left", "right") and len(order) == 2:
        w, l = (order[0], order[1]) if label["choice"] == "left" else (order[1], order[0])
        return [(texts[w], texts[l])]
    if label["choice"] == "rank" and label["ranking"]:
        rank = json.loads(label["ranking"])
        return [(texts[rank[i]], texts[rank[j]]) for i in range(len(rank)) for j in range(i + 1, len(rank))]
    return []


def fit_bt(diffs: np.ndarray, lam: float = 1e-3, iters: int = 300) -> np.ndarray:
    """Gradient descent on the BT loss over rows diffs[i] = phi(win) - phi(lose). Shapes: (n, d) -> (d,)."""
    n, d = diffs.shape
    w = np.zeros(d, dtype=diffs.dtype)
    if n == 0:
        return w
    step = 1.0 / (1.0 + lam)
    # Nesterov momentum: same fixed step, ~sqrt faster on this smooth convex problem.
    y, prev = w.copy(), w.copy()
    for t in range(1, iters + 1):
        m = diffs @ y  # (n,) margins
        g = -(diffs.T @ _sigmoid(-m)) / n + lam * y
        w = y - step * g
        y = w + (t - 1) / (t + 2) * (w - prev)
        prev = w
    return w


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def bt_metrics(w: np.ndarray, diffs: np.ndarray) -> dict:
    if len(diffs) == 0:
        return {"n": 0, "accuracy": None, "loss": None}
    m = diffs @ w
    return {
        "n": int(len(diffs)),
        "accuracy": float(np.mean(m > 0) + 0.5 * np.mean(m == 0)),  # a tie counts as half right
        "loss": float(np.mean(np.logaddexp(0.0, -m))),
    }


class LiveModel:
    def __init__(self, store: Store, *, retrain_every: int = 20, dim: int = 1024, max_pairs: int = 10000,
                 iters: int = 200):
        self.store = store
        self.retrain_every = max(1, int(retrain_every))
        self.dim = dim
        self.max_pairs = max_pairs
        self.iters = iters
        self.w: np.ndarray | None = None
        self.version = 0
        self.info: dict = {"features": "bag-of-words", "trained_on_labels": 0}
        self._new = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._feat_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- background thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="rlhfkit-livemodel", daemon=True)
        self._thread.start()
        if self.store.count_live_labels() > 0:
            self._wake.set()  # labels from an earlier run: train once at start

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def notify_label(self) -> None:
        with self._lock:
            self._new += 1
            if self._new >= self.retrain_every:
                self._new = 0
                self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.train_now()
            except Exception as e:  # the panel shows the error; labelling goes on regardless
                self.info = {**self.info, "error": f"{type(e).__name__}: {e}"}

    # -- training / prediction -----------------------------------------------------------------------------
    def _phi(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        v = self._feat_cache.get(text)
        if v is None:
            v = featurize_sparse(text, self.dim)
            if len(self._feat_cache) > 50_000:  # sparse entries: ~50 numbers each, so this bounds memory
                self._feat_cache.clear()
            self._feat_cache[text] = v
        return v

    def _reward(self, w: np.ndarray, text: str) -> float:
        idx, val = self._phi(text)
        return float(w[idx] @ val)

    def train_now(self) -> dict:
        t0 = time.perf_counter()
        labels = self.store.live_labels()[-self.max_pairs:]
        items: dict[int, list] = {}
        train: list[tuple[str, str]] = []
        test: list[tuple[str, str]] = []
        for lab in labels:
            if lab["item_id"] not in items:
                items[lab["item_id"]] = json.loads(self.store.item(lab["item_id"])["responses_json"])
            pairs = label_pairs(lab, items[lab["item_id"]])
            (test if is_held_out(lab["id"]) else train).extend(pairs)
        xtr, xte = self._diffs(train[-self.max_pairs:]), self._diffs(test)
        w = fit_bt(xtr, iters=self.iters)
        info = {
            "features": "bag-of-words",
            "trained_on_labels": len(labels),
            "train": bt_metrics(w, xtr),
            "heldout": bt_metrics(w, xte),
            "trained_at": time.time(),
            "train_seconds": round(time.perf_counter() - t0, 4),
        }
        with self._lock:
            self.w = w
            self.version += 1
            self.info = info
        return info

    def _diffs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Rows phi(win) - phi(lose), dense float32. Shape (n_pairs, dim + 1)."""
        x = np.zeros((len(pairs), self.dim + 1), dtype=np.float32)
        for r, (win, lose) in enumerate(pairs):
            i, v = self._phi(win)
            np.add.at(x[r], i, v)
            i, v = self._phi(lose)
            np.add.at(x[r], i, -v)
        return x

    def prob_left(self, responses: list, shown_order: list[int]) -> float | None:
        """The model's P(left > right) for a pair as shown (None before the first training)."""
        w = self.w
        if w is None or len(shown_order) < 2:
            return None
        margin = self._reward(w, message_text(responses[shown_order[0]])) - self._reward(
            w, message_text(responses[shown_order[1]]))
        return float(_sigmoid(np.array(margin)))

    def scores(self, responses: list, shown_order: list[int]) -> list[float] | None:
        w = self.w
        if w is None:
            return None
        return [self._reward(w, message_text(responses[i])) for i in shown_order]

    def status(self) -> dict:
        with self._lock:
            return {
                "version": self.version,
                "retrain_every": self.retrain_every,
                "comparisons": self.store.count_live_labels(),
                "until_retrain": self.retrain_every - self._new,
                **self.info,
            }
