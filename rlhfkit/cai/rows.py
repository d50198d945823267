"""Reading the inputs of the `cai` commands: JSONL rows checked line by line (`path:line: field: reason`), and the
text a judge reads from a prompt or a response given as a string or as chat messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from rlhfkit.data import DataError, _check_text, _read_json_lines


def read_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every JSON object in a JSONL file; the first bad line is a DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    n = 0
    for lineno, rec, err in _read_json_lines(p):
        if err is not None:
            raise DataError(f"{path}:{lineno}: <line>: {err}")
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: <row>: expected a JSON object, got {type(rec).__name__}")
        n += 1
        yield lineno, rec
    if not n:
        raise DataError(f"{path}: no rows (the file is empty)")


def prompt_rows(path: str, limit: int = 0) -> Iterator[tuple[str, dict]]:
    """("path:line", row) for the first `limit` rows (0: all), each checked to carry a usable prompt."""
    for n, (lineno, row) in enumerate(read_rows(path)):
        if limit and n >= limit:
            break
        where = f"{path}:{lineno}"
        if "prompt" not in row:
            raise DataError(f"{where}: prompt: missing")
        check_text(row["prompt"], f"{where}: prompt")
        yield where, row


def require_world_prompt(text: str, where: str, instead: str) -> None:
    """The rule-based judge and reviser read built-in world prompts only: name the line that is not one."""
    from rlhfkit.world import parse_prompt

    try:
        parse_prompt(text)
    except ValueError:
        raise DataError(f"{where}: prompt: not a prompt of the built-in world; the rule-based judge and reviser "
                        f"read world prompts only (use {instead})") from None


def check_text(value: Any, where: str) -> None:
    reason = _check_text(value, "completion")  # an empty response is a response; an empty prompt is not
    if reason:
        raise DataError(f"{where}: {reason}")


def prompt_text(prompt: Any) -> str:
    """The last user message of a conversational prompt, or the string itself (what a judge reads)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def response_text(response: Any) -> str:
    """A response string, or the assistant turns of a message list joined."""
    if isinstance(response, str):
        return response
    turns = [m["content"] for m in response if m["role"] == "assistant"] or [m["content"] for m in response]
    return "\n\n".join(turns)


def as_completion(prompt: Any, response: Any) -> Any:
    """A response in its prompt's representation (TRL: a messages prompt goes with assistant-turn lists)."""
    if isinstance(prompt, list) and isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return response
