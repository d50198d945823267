"""Tools for multi-turn rollouts: a registry of plain Python functions, a runner that contains them, and the parser
that finds a model's tool calls in its text.

    registry = load_tools(["calculator", "lookup=facts.jsonl", "mypkg.tools:search"])
    registry.schemas()            # JSON schemas for the `tools` column and apply_chat_template(tools=...)
    with ToolRunner(registry, timeout_s=5) as runner:
        runner.call("calculator", {"expression": "123 * 456"})   # ToolResult(ok=True, content="56088", ...)

A tool is a function with type hints and a Google-style docstring (`Args:`), from which transformers'
`get_json_schema` derives its schema, as `apply_chat_template(tools=[fn])` would. Calls run in a worker process
(`toolworker`): a call past its timeout is killed with the worker (restarted on the next call), an exception comes
back as `TypeName: message`, output is cut at `max_output_bytes`. Whatever a tool returns reaches the model as text,
and the trainer never executes it.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlhfkit.data import tools as tool_data
from rlhfkit.rollout import builtin_tools, toolworker


class ToolError(ValueError):
    """A tool that cannot be registered (bad spec, no schema, cannot reach the worker)."""


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}


def function_schema(fn: Callable, name: str | None = None) -> dict:
    """The JSON schema of a function from its type hints and docstring (transformers' `get_json_schema`)."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(fn)
    except Exception as e:  # DocstringParsingException, TypeHintParsingException: one message for both
        raise ToolError(f"tool {name or getattr(fn, '__name__', fn)!r}: cannot derive its JSON schema: {e} (give it "
                        "type hints and a Google-style docstring with an Args: line per argument)") from None
    if name:
        schema["function"]["name"] = name
    return schema


class ToolRegistry:
    """Tools by name, each with its schema. Tool functions must be importable by name (module-level functions, or
    bound methods of picklable objects such as `LookupTable(...).lookup`): the worker process imports them."""

    def __init__(self, tools: list[Callable] | None = None):
        self.tools: dict[str, Tool] = {}
        for fn in tools or []:
            self.register(fn)

    def register(self, fn: Callable, name: str | None = None, schema: dict | None = None) -> Tool:
        schema = schema or function_schema(fn, name)
        reason = tool_data.check_schema(schema)
        if reason:
            raise ToolError(f"tool {name or fn!r}: bad schema: {reason}")
        name = schema["function"]["name"]
        if name in self.tools:
            raise ToolError(f"tool {name!r} is registered twice")
        try:
            pickle.dumps(fn)
        except Exception as e:
            raise ToolError(f"tool {name!r} cannot be sent to the tool worker ({e}); define it at module level"
                            ) from None
        self.tools[name] = Tool(name, fn, schema)
        return self.tools[name]

    def schemas(self) -> list[dict]:
        return [t.schema for t in self.tools.values()]

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def check_call(self, name: Any, arguments: Any) -> str | None:
        """None if the call names a registered tool with arguments that fit its schema, else the reason (worded for
        the model that made the call)."""
        if name not in self.tools:
            return f"unknown tool {name!r}; available: {', '.join(self.tools) or 'none'}"
        return tool_data.check_arguments(self.tools[name].schema, arguments)


def load_table(path: str | Path) -> dict[str, str]:
    """A lookup table from a .json object ({key: value}) or .jsonl rows ({"key": ..., "value": ...}); problems are
    reported as `path:line: field: reason`."""
    from rlhfkit import data as data_lib

    path = Path(path)
    if not path.exists():
        raise data_lib.DataError(f"{path}: file not found")
    if path.suffix == ".json":
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise data_lib.DataError(f"{path}: bad JSON: {e}") from None
        if not isinstance(table, dict):
            raise data_lib.DataError(f"{path}:1: <file>: expected an object mapping keys to values")
        return {str(k): toolworker.as_text(v) for k, v in table.items()}
    table, errors = {}, []
    for lineno, rec, err in data_lib._local_records(path):
        for fld in ("key", "value"):
            if err is None and not (isinstance(rec, dict) and fld in rec):
                err = f"{fld}: missing (rows are {{\"key\": ..., \"value\": ...}})"
        if err is None and not isinstance(rec["key"], str):
            err = f"key: expected a string, got {type(rec['key']).__name__}"
        if err:
            errors.append(f"{path}:{lineno}: {err}")
        else:
            table[rec["key"]] = toolworker.as_text(rec["value"])
    if errors:
        shown = "\n".join(errors[:data_lib.MAX_REPORTED])
        raise data_lib.DataError(f"{len(errors)} invalid row(s) in {path}:\n{shown}")
    return table


def load_tools(specs: list[str]) -> ToolRegistry:
    """A registry from specs: `calculator`, `lookup=TABLE` (a .json or .jsonl table), or `module:function` for any
    importable function with type hints and a docstring."""
    registry = ToolRegistry()
    for spec in specs:
        if spec == "calculator":
            registry.register(builtin_tools.calculator)
        elif spec.startswith("lookup="):
            registry.register(builtin_tools.LookupTable(load_table(spec.removeprefix("lookup="))).lookup)
        elif ":" in spec:
            module, _, attr = spec.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ToolError(f"tool {spec!r}: cannot import: {e}") from None
            if not callable(fn):
                raise ToolError(f"tool {spec!r} is not a function")
            registry.register(fn)
        else:
            raise ToolError(f"tool spec {spec!r}: expected calculator, lookup=TABLE or module:function")
    return registry


# ----------------------------------------------------------------------------------------------- running
@dataclass
class ToolResult:
    name: str
    content: str  # what the model reads: the output, or "error: ..." (already cut to the byte cap)
    ok: bool
    error: str | None = None  # "raised" | "timeout" | "crashed" | None
    truncated: bool = False
    output_bytes: int = 0  # the output's full size before the cap
    seconds: float = 0.0


class ToolRunner:
    """Runs registered tools in one worker process, one call at a time, each under `timeout_s`.

    Containment: a call past its timeout, or one that kills its interpreter, costs the worker (killed, restarted on
    the next call), never the trainer; an exception is returned as its message; output beyond `max_output_bytes`
    (UTF-8) is cut in the worker and marked. Counters in `stats`."""

    def __init__(self, registry: ToolRegistry, timeout_s: float = 5.0, max_output_bytes: int = 4096,
                 startup_timeout_s: float = 120.0):
        if timeout_s <= 0 or max_output_bytes <= 0:
            raise ValueError("timeout_s and max_output_bytes must be > 0")
        self.registry, self.timeout_s, self.max_output_bytes = registry, timeout_s, max_output_bytes
        self.startup_timeout_s = startup_timeout_s
        self.stats = {"calls": 0, "errors": 0, "timeouts": 0, "crashes": 0, "truncated": 0}
        self._proc = self._send = self._recv = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        # the trainer's import path, so the worker finds rlhfkit and the tools' modules as the trainer does
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        self._proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.rollout.toolworker", str(request_r),
                                       str(reply_w)], pass_fds=(request_r, reply_w), stdin=subprocess.DEVNULL,
                                      env=env, start_new_session=True)
        os.close(request_r)
        os.close(reply_w)
        self._send, self._recv = Connection(request_w, readable=False), Connection(reply_r, writable=False)
        self._send.send(({name: t.fn for name, t in self.registry.tools.items()}, self.max_output_bytes))
        # wait for the worker to import the tools, so a call's timeout counts the call alone
        if not (self._recv.poll(self.startup_timeout_s) and self._receive() == "ready"):
            self._stop()
            raise ToolError("the tool worker did not start (a tool's module failed to import in a fresh interpreter?)")

    def _receive(self) -> Any:
        try:
            return self._recv.recv()
        except (EOFError, OSError):
            return None  # the worker exited

    def _stop(self) -> None:
        if self._proc is not None:
            try:  # its own process group (start_new_session): anything a tool started goes with it
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(timeout=30)
            self._send.close()
            self._recv.close()
        self._proc = self._send = self._recv = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> "ToolRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, name: str, arguments: dict) -> ToolResult:
        """Run one (already validated, `registry.check_call`) call; never raises for anything the tool does."""
        with self._lock:
            self.stats["calls"] += 1
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            t0 = time.perf_counter()
            try:
                self._send.send((name, arguments))
            except OSError:  # the worker died since the last call
                return self._failed(name, "crashed", "stopped the tool process", t0)
            if not self._recv.poll(self.timeout_s):
                return self._failed(name, "timeout", f"timed out after {self.timeout_s:g}s", t0)
            reply = self._receive()
            if reply is None:
                return self._failed(name, "crashed", "stopped the tool process during the call", t0)
            ok, text, size = reply
        truncated = size > self.max_output_bytes
        self.stats["truncated"] += truncated
        if truncated:
            text += f"\n[output truncated: {size} bytes, the first {self.max_output_bytes} shown]"
        if not ok:
            self.stats["errors"] += 1
            text = f"error: {text}"
        return ToolResult(name, text, ok, None if ok else "raised", truncated, size, time.perf_counter() - t0)

    def _failed(self, name: str, kind: str, message: str, t0: float) -> ToolResult:
        self._stop()  # the worker is stuck or gone: the next call gets a fresh one
        self.stats["timeouts" if kind == "timeout" else "crashes"] += 1
        self.stats["errors"] += 1
        return ToolResult(name, f"error: {name} {message}", False, kind, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- parsing
@dataclass
class ToolCall:
    name: str | None
    arguments: dict = field(default_factory=dict)
    error: str | None = None  # set when the call is malformed: this text is what the model reads back


@dataclass
class ParsedTurn:
    content: str  # the turn's text outside its tool-call blocks (the answer, when there are no calls)
    calls: list[ToolCall]  # in the order they appear, malformed ones included (with `error`)


Parser = Callable[[str], ParsedTurn]
_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> ParsedTurn:
    """Tool calls in the Hermes / Qwen2.5 convention: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
    any number per turn. A block that is not a JSON object with a string `name` and an object `arguments`, or that
    is never closed, is a malformed call with the reason in `error`."""
    calls, spans = [], []
    for m in _HERMES.finditer(text):
        spans.append(m.span())
        body = m.group(1).strip()
        if not m.group(2):
            calls.append(ToolCall(None, error="tool call not closed with </tool_call>"))
            continue
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            calls.append(ToolCall(None, error=f"tool call is not valid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall(None, error='tool call must be {"name": "...", "arguments": {...}}'))
        elif not isinstance(obj.get("arguments", {}), dict):
            calls.append(ToolCall(obj["name"], error=f"arguments of {obj['name']} must be a JSON object"))
        else:
            calls.append(ToolCall(obj["name"], obj.get("arguments", {})))
    content, last = [], 0
    for start, end in spans:
        content.append(text[last:start])
        last = end
    content.append(text[last:])
    return ParsedTurn("".join(content).strip(), calls)
