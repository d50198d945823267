"""Load generator for the labelling app: many concurrent annotators over HTTP, with retries and duplicate submits.

Used by tests/test_label_load.py (small scale) and scripts/bench_label.py (50 clients x 200 labels). Each client
logs in, then loops: POST /api/next, POST /api/labels. Some submits are sent twice at once (a double click), some
with a tiny timeout first (the response is "lost", the client retries with the same idempotency key). A label
counts as acknowledged only when a 200 came back; `Result.acked` maps (user, key) -> label_id so the caller can
check every acknowledged label is stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Result:
    acked: dict = field(default_factory=dict)  # (user, idem_key) -> label_id
    latencies: list = field(default_factory=list)  # seconds per acknowledged label submit (incl. retries)
    duplicates_sent: int = 0
    retries: int = 0
    transport_retries: int = 0
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    done_clients: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_items(path: Path, n: int, seed: int = 0) -> Path:
    """A candidates file of n pairs whose responses differ in length and wording."""
    rng = random.Random(seed)
    words = "alpha beta gamma delta answer because therefore clearly maybe sorry".split()
    with open(path, "w") as f:
        for i in range(n):
            a = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            b = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            f.write(json.dumps({"id": f"load-{i}", "prompt": f"Question {i}?", "responses": [a, b]}) + "\n")
    return path


def add_users(db: Path, names: list[str], admin: bool = False) -> dict[str, str]:
    """Create users directly in the store (the CLI's add-user, without a process per user)."""
    from rlhfkit.app import auth
    from rlhfkit.app.db import open_store

    store = open_store(db)
    tokens = {}
    for n in names:
        tokens[n] = auth.new_token()
        store.add_user(n, "admin" if admin else "annotator", auth.hash_token(tokens[n]))
    store.close()
    return tokens


class Server:
    """`rlhfkit label serve` in a subprocess on 127.0.0.1 (so it can be kill -9'd)."""

    def __init__(self, db: Path, port: int | None = None, *, items: Path | None = None, overlap: int = 1,
                 retrain_every: int = 50, synchronous: str = "FULL", log: Path | None = None, features: str = "bow",
                 args: tuple[str, ...] = ()):
        # features: bag-of-words by default, so a load run measures the store, not MiniLM's start-up (~10 s, 0.5 GB)
        self.db, self.port, self.features, self.args = db, port or free_port(), features, tuple(args)
        self.items, self.overlap, self.retrain_every, self.synchronous = items, overlap, retrain_every, synchronous
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Server":
        cmd = [sys.executable, "-m", "rlhfkit.cli.label", "serve", "--db", str(self.db), "--port", str(self.port),
               "--overlap", str(self.overlap), "--retrain-every", str(self.retrain_every),
               "--synchronous", self.synchronous, "--features", self.features]
        if self.items:
            cmd += ["--items", str(self.items)]
        cmd += self.args
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not come up")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def _post(c: httpx.AsyncClient, res: Result, path: str, attempts: int = 5, **kw) -> httpx.Response:
    """POST, retrying transport failures (a reset keep-alive connection, a refused connect) with backoff.
    Safe for labels because the body carries its idempotency key."""
    for i in range(attempts):
        try:
            return await c.post(path, **kw)
        except httpx.TransportError:
            if i == attempts - 1:
                raise
            res.transport_retries += 1
            await asyncio.sleep(0.05 * 2**i)
    raise AssertionError("unreachable")


async def _client(base: str, name: str, token: str, n_labels: int, res: Result, rng: random.Random,
                  dup_rate: float, lost_rate: float, stop: asyncio.Event, fail_fast: bool) -> None:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as c:
        try:
            r = await _post(c, res, "/api/login", json={"name": name, "token": token})
            r.raise_for_status()
            h = {"X-CSRF-Token": r.json()["csrf"]}
            for _ in range(n_labels):
                if stop.is_set():
                    return
                r = await _post(c, res, "/api/next", headers=h)
                r.raise_for_status()
                nxt = r.json()
                if nxt["done"]:
                    break
                item = nxt["item"]
                body = {"item_id": item["item_id"], "idempotency_key": secrets.token_hex(12),
                        "choice": rng.choice(["left", "left", "right", "tie", "both_bad"]),
                        "rationale": rng.choice(["", "shorter", "more accurate"])}
                t0 = time.perf_counter()
                if rng.random() < lost_rate:
                    # The first attempt's response is lost (tiny timeout); it may or may not have been stored.
                    res.retries += 1
                    try:
                        await c.post("/api/labels", json=body, headers=h, timeout=0.002)
                    except httpx.TimeoutException:
                        pass
                if rng.random() < dup_rate:
                    res.duplicates_sent += 1
                    rs = await asyncio.gather(*(_post(c, res, "/api/labels", json=body, headers=h) for _ in range(2)))
                else:
                    rs = [await _post(c, res, "/api/labels", json=body, headers=h)]
                ok = [x for x in rs if x.status_code == 200]
                while not ok:  # retry with the same key until acknowledged (503 = busy)
                    res.retries += 1
                    await asyncio.sleep(0.05)
                    x = await _post(c, res, "/api/labels", json=body, headers=h)
                    if x.status_code not in (200, 503):
                        raise RuntimeError(f"label submit -> {x.status_code} {x.text}")
                    ok = [x] if x.status_code == 200 else []
                ids = {x.json()["label_id"] for x in ok}
                if len(ids) != 1:
                    raise RuntimeError(f"one key, several label ids: {ids}")
                res.latencies.append(time.perf_counter() - t0)
                res.acked[(name, body["idempotency_key"])] = ids.pop()
            res.done_clients += 1
        except (httpx.HTTPError, RuntimeError, KeyError) as e:
            res.errors.append(f"{name}: {type(e).__name__}: {e}")
            if fail_fast:
                raise


async def run_load(base: str, tokens: dict[str, str], n_labels: int, *, seed: int = 0, dup_rate: float = 0.1,
                   lost_rate: float = 0.05, stop: asyncio.Event | None = None, fail_fast: bool = True) -> Result:
    res = Result()
    stop = stop or asyncio.Event()
    t0 = time.perf_counter()
    await asyncio.gather(*(
        _client(base, name, tok, n_labels, res, random.Random(f"{seed}:{name}"), dup_rate, lost_rate, stop, fail_fast)
        for name, tok in tokens.items()
    ), return_exceptions=not fail_fast)
    res.seconds = time.perf_counter() - t0
    return res


def check_stored(db: Path, acked: dict) -> dict:
    """Every acknowledged (user, key) is stored exactly once, live, with the acknowledged id."""
    import sqlite3

    c = sqlite3.connect(db)
    rows = c.execute(
        "SELECT u.name, l.idem_key, l.id, l.undone FROM labels l JOIN users u ON u.id = l.user_id"
    ).fetchall()
    integrity = c.execute("PRAGMA integrity_check").fetchone()[0]
    c.close()
    stored: dict = {}
    for name, key, lid, undone in rows:
        stored.setdefault((name, key), []).append((lid, undone))
    missing = [k for k in acked if k not in stored]
    wrong = [k for k, v in acked.items() if k in stored and stored[k] != [(v, 0)]]
    multi = [k for k, v in stored.items() if len(v) > 1]
    return {"integrity": integrity, "stored": len(rows), "acked": len(acked), "missing": len(missing),
            "wrong": len(wrong), "multi": len(multi)}


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]
