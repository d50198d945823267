"""The playground's side of generation: one worker process per request (`rlhfkit.tools.playground_worker`), bounded
in time, tokens and concurrency, its answers streamed to the page as NDJSON, one line per checkpoint.

The app never imports torch; the worker does, in its own process group, so a timeout or a client that goes away
kills everything it started (`os.killpg`). By default each request gets a fresh process; with keep_warm
(`--play-keep-warm`) a worker that answered in time waits for the next one (`--serve`: one request per line), until
it has been idle `idle_s` seconds or the server stops. Lines streamed to the page:

    {"event": "start", "checkpoints": [ids], "max_new_tokens", "timeout_s"}
    {"event": "result", "id", "response", "tokens", "finished", "proxy", "gold", "components", "n", "seconds"}
    {"event": "error", "id" | null, "detail"}          a checkpoint failed, or (id null) the worker did
    {"event": "done", "seconds", "timed_out"}
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import AsyncIterator

import rlhfkit

WORKER = "rlhfkit.tools.playground_worker"
RESULT_KEYS = ("id", "response", "tokens", "finished", "proxy", "gold", "components", "n", "seconds")


class Busy(Exception):
    """Every worker slot is taken (the route answers 429)."""


class Playground:
    """Runs worker processes: at most `concurrency` at once, each killed after `timeout_s` seconds, each asked for at
    most `max_new_tokens` tokens per answer."""

    def __init__(self, timeout_s: float = 60.0, max_new_tokens: int = 64, concurrency: int = 1, threads: int = 1,
                 python: str = sys.executable, keep_warm: bool = False, idle_s: float = 300.0):
        self.timeout_s, self.max_new_tokens, self.concurrency = timeout_s, max_new_tokens, concurrency
        self.threads, self.python = threads, python
        # keep_warm: a worker that answered in time waits (at most idle_s) for the next request, torch imported and
        # its models loaded; one that timed out or lost its client is killed as always
        self.keep_warm, self.idle_s = keep_warm, idle_s
        self._idle: list[Worker] = []
        self._slots: dict[int, float] = {}  # slot -> the time after which it is stale (a stream that never ran)
        self._next = 0
        self.pids: deque[int] = deque(maxlen=64)  # recent worker pids (tests check none outlives its stream)

    def acquire(self) -> int:
        """A worker slot, or Busy. Called on the event loop (no lock needed); released when the stream ends."""
        now = time.monotonic()
        for k in [k for k, stale in self._slots.items() if stale < now]:
            del self._slots[k]  # a response whose body never started streaming never released its slot
        if len(self._slots) >= self.concurrency:
            raise Busy()
        self._next += 1
        self._slots[self._next] = now + self.timeout_s + 30
        return self._next

    def release(self, slot: int) -> None:
        self._slots.pop(slot, None)

    def request(self, prompt: str, checkpoints: list[dict], max_new_tokens: int, temperature: float,
                seed: int) -> dict:
        """The worker's request, with the token cap applied."""
        return {"prompt": prompt, "checkpoints": checkpoints, "max_new_tokens": min(max_new_tokens, self.max_new_tokens),
                "temperature": temperature, "seed": seed, "threads": self.threads}

    async def stream(self, req: dict, slot: int) -> AsyncIterator[bytes]:
        """NDJSON lines: start, one result or error per checkpoint as the worker finishes it, done."""
        t0 = time.monotonic()
        w: Worker | None = None
        timed_out = reusable = False
        try:
            yield _line({"event": "start", "checkpoints": [c["id"] for c in req["checkpoints"]],
                         "max_new_tokens": req["max_new_tokens"], "timeout_s": self.timeout_s})
            w = self._take_idle()
            if w is None:
                try:
                    w = await self._spawn()
                except OSError as e:  # no interpreter there, no processes left: said in the stream, which has begun
                    yield _line({"event": "error", "id": None, "detail": f"could not start the worker: {e}"})
                    yield _line({"event": "done", "seconds": round(time.monotonic() - t0, 3), "timed_out": False})
                    return
            proc, stderr_tail = w.proc, w.tail
            proc.stdin.write(json.dumps(req).encode() + b"\n")
            if not self.keep_warm:
                proc.stdin.close()  # one request: the worker exits after it
            deadline = t0 + self.timeout_s
            pending = {c["id"] for c in req["checkpoints"]}
            while True:
                left = deadline - time.monotonic()
                try:
                    raw = await asyncio.wait_for(proc.stdout.readline(), timeout=max(left, 0.001))
                except asyncio.TimeoutError:
                    timed_out = True
                    _kill(proc)
                    yield _line({"event": "error", "id": None,
                                 "detail": f"timed out after {self.timeout_s:g} s; the worker was stopped"})
                    break
                if not raw:  # the worker exited
                    await proc.wait()
                    await w.drain
                    if pending:
                        tail = b"".join(stderr_tail).decode("utf-8", "replace").strip().splitlines()[-3:]
                        yield _line({"event": "error", "id": None, "detail": f"worker exited ({proc.returncode})"
                                     + (": " + " | ".join(tail) if tail else "")})
                    break
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if ev.get("event") == "worker_done":  # all answered; its exit (torch teardown) is not waited for
                    reusable = self.keep_warm
                    break
                if ev.get("event") == "result" and ev.get("id") in pending:
                    pending.discard(ev["id"])
                    yield _line({"event": "result", **{k: _finite(ev.get(k)) for k in RESULT_KEYS}})
                elif ev.get("event") == "error" and ev.get("id") in pending:
                    pending.discard(ev["id"])
                    yield _line({"event": "error", "id": ev["id"], "detail": str(ev.get("detail", ""))[:500]})
            yield _line({"event": "done", "seconds": round(time.monotonic() - t0, 3), "timed_out": timed_out})
        finally:  # also when the client went away mid-stream (the generator is closed or cancelled)
            if w is not None:
                if reusable and w.proc.returncode is None and len(self._idle) < self.concurrency:
                    w.since = time.monotonic()
                    self._idle.append(w)
                    asyncio.get_running_loop().call_later(self.idle_s + 0.05, self._reap)
                else:
                    await w.stop()
            self.release(slot)

    async def _spawn(self) -> "Worker":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(rlhfkit.__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        args = ["--serve"] if self.keep_warm else []
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", WORKER, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True, limit=2**20)
        self.pids.append(proc.pid)
        return Worker(proc)

    def _take_idle(self) -> "Worker | None":
        """A warm worker that is still alive, or None; ones idle longer than idle_s are stopped on the way."""
        now = time.monotonic()
        while self._idle:
            w = self._idle.pop()
            if w.proc.returncode is None and now - w.since < self.idle_s:
                return w
            _kill(w.proc)
            w.drain.cancel()
        return None

    def _reap(self) -> None:
        """Stop the warm workers idle for idle_s or more (scheduled each time one goes idle)."""
        now = time.monotonic()
        for w in [w for w in self._idle if now - w.since >= self.idle_s]:
            self._idle.remove(w)
            _kill(w.proc)
            w.drain.cancel()

    async def close(self) -> None:
        """Stop the warm workers (the server is shutting down)."""
        idle, self._idle = self._idle, []
        for w in idle:
            await w.stop()


class Worker:
    """One worker process, the task reading its stderr, and the last lines it wrote there."""

    def __init__(self, proc):
        self.proc = proc
        self.tail: deque[bytes] = deque(maxlen=20)
        self.drain = asyncio.ensure_future(_drain(proc.stderr, self.tail))
        self.since = time.monotonic()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            _kill(self.proc)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        self.drain.cancel()


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode()


def _finite(v):
    """JSON has no NaN or infinity: a non-finite score (a diverged model) is sent as null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    return v


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's whole group: it may have started helpers
    except ProcessLookupError:
        pass


async def _drain(stream, tail: deque) -> None:
    """Read the worker's stderr as it comes (a full pipe would block it), keeping the last lines for errors."""
    while True:
        chunk = await stream.readline()
        if not chunk:
            return
        tail.append(chunk[-400:])
