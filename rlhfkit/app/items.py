"""What the labelling app accepts as input: request bodies as standard JSON only (`strict_json_loads`), and items
(candidates files, preference rows, prompt-completion rows) parsed and checked row by row (`parse_rows`), with
the text of prompts and responses as the app and the live model read it. No storage here: db.py stores what this
returns."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class JSONInputError(ValueError):
    """Input that Python's json module parses but standard JSON (RFC 8259) does not allow, or cannot be stored."""


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not standard JSON (numbers must be finite)")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999 is valid JSON syntax, but Python reads it as infinity
        raise JSONInputError(f"the number {literal[:40]} overflows to infinity, which standard JSON cannot carry")
    return value


def strict_json_loads(data: str | bytes) -> Any:
    """json.loads for standard JSON only. Python's parser also accepts NaN, Infinity and -Infinity, turns 1e999
    into infinity and keeps lone UTF-16 surrogates ("\\ud800"); none of these can be written back as standard
    JSON or UTF-8, so storing or echoing them fails later, far from the input. They are refused here, as
    `JSONInputError` with a message naming the problem (a syntax error stays a json.JSONDecodeError)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONInputError(f"not UTF-8 at byte {e.start} (standard JSON text is UTF-8)") from None
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise JSONInputError("nested too deeply to parse") from None
    except (json.JSONDecodeError, JSONInputError):
        raise
    except ValueError:  # Python's limit on integer digits (the only other ValueError json.loads raises)
        raise JSONInputError("an integer has too many digits to read (Python's limit: 4300)") from None
    if _SURROGATE_ESCAPE.search(data):
        # Escaped pairs decode to one character; only an unpaired half fails to encode.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONInputError("a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff): not a "
                                 "Unicode character, so not standard JSON text") from None
    return value



# ---------------------------------------------------------------------------------------------------------
# Item parsing: candidates files, preference rows, prompt-completion rows.
# ---------------------------------------------------------------------------------------------------------


def message_text(value: Any) -> str:
    """Text of a response: a string, or the content of a conversational turn list (assistant turns joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content", ""))
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict)]
        asst = [m for m in turns if m.get("role") == "assistant"] or turns
        return "\n\n".join(str(m.get("content", "")) for m in asst)
    return str(value)


def prompt_user_text(prompt: Any) -> str:
    """The user message text of a prompt (what the world's gold judge reads)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""
    return str(prompt)


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


MAX_ITEM_BYTES = 2**20
"""An item's prompt + responses + extra columns as JSON, at most (every label request reads its item back)."""


class ItemError(ValueError):
    """An items row that cannot become an item: a field of the wrong shape (status 422) or an item over the size
    limit (413). The message names the row and the field."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _what(value: Any) -> str:
    """How an error message names a value it did not expect (never the value itself: it may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _turns_problem(value: Any, field: str) -> str | None:
    """Why `value` is not a prompt or a response: a string, or a non-empty list of {"role", "content"} messages
    with string values. (Anything else would show as str(): "1", "None", a dict's repr.)"""
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else _what(value)
        return f"{field}: must be a string or a non-empty list of {{role, content}} messages, got {shown}"
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return f"{field}[{i}]: must be a {{role, content}} message, got {_what(m)}"
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                return f"{field}[{i}].{key}: must be a string, got {_what(m.get(key))}"
    return None


def _row_problem(row: dict) -> str | None:
    """The first field of a row that cannot be shown or stored as it is, with why."""
    ext = row.get("id")
    if ext is not None and (isinstance(ext, bool) or not isinstance(ext, (str, int)) or len(str(ext)) > 200):
        return f"id: must be a string (at most 200 characters) or an integer, got {_what(ext)}"
    if row.get("kind") is not None and not isinstance(row["kind"], str):
        return f"kind: must be a string or null, got {_what(row['kind'])}"
    shown: list[tuple[str, Any]] = [("prompt", row["prompt"])] if "prompt" in row else []
    if "responses" in row:  # the same order of formats as parse_rows
        if isinstance(row["responses"], list):  # (not a list: parse_rows skips the row with a warning)
            shown += [(f"responses[{i}]", r) for i, r in enumerate(row["responses"])]
    elif "chosen" in row and "rejected" in row:
        shown += [("chosen", row["chosen"]), ("rejected", row["rejected"])]
    elif "completion" in row:
        shown.append(("completion", row["completion"]))
    for field, value in shown:
        if (problem := _turns_problem(value, field)) is not None:
            return problem
    return None


@dataclass
class ParsedItem:
    ext_id: str
    prompt: Any
    responses: list
    kind: str | None
    extra: dict


def parse_rows(rows: list[dict], max_item_bytes: int | None = MAX_ITEM_BYTES) -> tuple[list[ParsedItem], list[str]]:
    """Turn rows of any supported format into items; returns (items, warnings).

    - candidates: {"prompt", "responses": [r1..rK]} with K >= 2 (K > 2 is labelled by ranking);
    - preference: {"prompt"?, "chosen", "rejected"} -> a pair (left/right order is randomised when shown);
    - prompt-completion: {"prompt", "completion"} rows grouped by prompt; a prompt with one completion is skipped.
    Extra columns are kept in `extra` (and the row's "kind", the world's marker, in `kind`).

    A row of no known format is skipped with a warning. A known row whose prompt or responses are not strings or
    {role, content} message lists, or whose item is over `max_item_bytes` as JSON, raises `ItemError`: the rows
    are all-or-nothing then, so a partly imported file never has to be untangled.
    """
    items: list[ParsedItem] = []
    warnings: list[str] = []
    groups: dict[str, list[tuple[int, dict]]] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            warnings.append(f"row {n}: not a JSON object, skipped")
            continue
        if (problem := _row_problem(row)) is not None:
            raise ItemError(f"{_row_name(n, row)}: {problem}")
        if "responses" in row:
            responses = row["responses"]
            if not isinstance(responses, list) or len(responses) < 2:
                warnings.append(f"row {n}: 'responses' needs a list of at least 2, skipped")
                continue
            rest = {k: v for k, v in row.items() if k not in ("prompt", "responses", "id", "kind")}
            items.append(_item(row, row.get("prompt", ""), responses, rest, _row_name(n, row), max_item_bytes))
        elif "chosen" in row and "rejected" in row:
            rest = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "id", "kind")}
            items.append(_item(row, row.get("prompt", ""), [row["chosen"], row["rejected"]], rest, _row_name(n, row),
                               max_item_bytes))
        elif "prompt" in row and "completion" in row:
            groups.setdefault(_canon(row["prompt"]), []).append((n, row))
        else:
            warnings.append(f"row {n}: no 'responses', 'chosen'/'rejected' or 'prompt'/'completion', skipped")
    for members in groups.values():
        if len(members) < 2:
            warnings.append(f"row {members[0][0]}: prompt has a single completion, nothing to compare, skipped")
            continue
        first = members[0][1]
        responses = [r["completion"] for _, r in members]
        where = f"rows {', '.join(str(n) for n, _ in members[:5])}{' ...' if len(members) > 5 else ''}"
        items.append(_item({"kind": first.get("kind")}, first["prompt"], responses, {}, where, max_item_bytes))
    return items, warnings


def _row_name(n: int, row: dict) -> str:
    return f"row {n}" if row.get("id") is None else f"row {n} (id {str(row['id'])!r})"


def _item(row: dict, prompt: Any, responses: list, extra: dict, where: str, max_bytes: int | None) -> ParsedItem:
    try:
        content = _canon([prompt, responses]).encode("utf-8")
        size = len(content) + len(_canon(extra).encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, from a caller that did not parse standard JSON
        raise ItemError(f"{where}: a string is not valid Unicode (an unpaired surrogate)") from None
    except ValueError as e:  # NaN or infinity in an extra column, from such a caller
        raise ItemError(f"{where}: {e}") from None
    if max_bytes is not None and size > max_bytes:
        raise ItemError(f"{where}: the item is {size:,} bytes as JSON, over the limit of {_size(max_bytes)} per item",
                        status=413)
    ext = row.get("id")
    if ext is None:
        # Content-addressed id: importing the same file twice adds nothing.
        ext = "sha256:" + hashlib.sha256(content).hexdigest()[:32]
    kind = row.get("kind")
    return ParsedItem(str(ext), prompt, list(responses), None if kind is None else str(kind), extra)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n:,} bytes"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a .jsonl file (or a .json list); a line that is not JSON is an error naming the line."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        try:
            data = strict_json_loads(text)
        except JSONInputError as e:
            raise ValueError(f"{path}: {e}") from None
        return data if isinstance(data, list) else [data]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(strict_json_loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            except JSONInputError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return rows
