"""The tool worker: a separate process that runs tool functions, so the trainer can always get away from one.

A tool that hangs is killed with its process (a Python thread cannot be stopped), one that crashes the interpreter
takes only the worker with it, and one that returns a huge value is cut here, before it crosses the pipe. Its result
always comes back as text: data for the model to read, never anything the trainer runs.

Standard library only: the worker is a fresh interpreter (`python -m rlhfkit.rollout.toolworker`), so it inherits
no threads, locks or CUDA state from the trainer, never re-imports the trainer's script (as multiprocessing's spawn
and forkserver methods do), and must not pay for importing torch.
"""
from __future__ import annotations

import json
import os
import sys
from multiprocessing.connection import Connection
from typing import Any


def as_text(value: Any) -> str:
    """A tool's return value as text: strings as they are, anything JSON can write as JSON, the rest via str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def cap_bytes(text: str, max_bytes: int) -> tuple[str, int]:
    """(text cut to at most `max_bytes` UTF-8 bytes at a character boundary, its full size in bytes)."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= max_bytes:
        return text, len(raw)
    return raw[:max_bytes].decode("utf-8", errors="ignore"), len(raw)


def describe_error(e: BaseException) -> str:
    """`TypeName: message`, the whole of what the model sees of a tool's exception (no traceback: the model cannot
    use one, and it would leak the tool's source paths into training data)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def serve(inbox: Connection, outbox: Connection) -> None:
    """Read the tools and the byte cap, say "ready", then answer (name, arguments) requests with (ok, text, full
    size in bytes) until the trainer closes the pipe."""
    tools, max_bytes = inbox.recv()
    outbox.send("ready")
    while True:
        try:
            name, arguments = inbox.recv()
        except (EOFError, OSError):
            return
        try:
            ok, text = True, as_text(tools[name](**arguments))
        except BaseException as e:  # noqa: BLE001 (SystemExit and KeyboardInterrupt from a tool are its errors too)
            ok, text = False, describe_error(e)
        text, size = cap_bytes(text, max_bytes)
        outbox.send((ok, text, size))


if __name__ == "__main__":
    # A tool that prints must not write into the trainer's pipe: the requests and replies travel on their own file
    # descriptors (argv), and stdout goes to stderr.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
