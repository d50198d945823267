"""Tool-use rows in TRL's format: validation with `path:line: field: reason`, and rendering through a chat template.

A row carries a `tools` column of JSON schemas in OpenAI function-calling form (what transformers'
`get_json_schema` returns and what `apply_chat_template(tools=...)` takes):

    {"type": "function", "function": {"name": "calculator", "description": "...",
                                      "parameters": {"type": "object", "properties": {...}, "required": [...]}}}

and its conversations (`messages`, or `prompt` / `completion` / `chosen` / `rejected`) may hold assistant turns
that call tools and the tools' results:

    {"role": "assistant", "tool_calls": [{"type": "function",
                                          "function": {"name": "calculator", "arguments": {"expression": "2+2"}}}]}
    {"role": "tool", "name": "calculator", "content": "4"}

(TRL's "Tool calling" dataset format; transformers' chat-templating guide, "Tool use".) Datasets on the Hub often
store `tools` and `arguments` as JSON strings, because Arrow cannot hold schemas whose keys differ from row to
row; `normalize_row` decodes them, and an assistant turn that only calls tools may omit `content`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from rlhfkit import data as data_lib

CONVERSATION_FIELDS = ("messages", "prompt", "completion", "chosen", "rejected")
# JSON-schema type name -> the Python types json.loads produces for it (bool is not a number in JSON schema)
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


def _loads(value: Any, what: str) -> tuple[Any, str | None]:
    """A JSON string decoded (anything else as it is), or the reason it is not JSON."""
    if not isinstance(value, str):
        return value, None
    try:
        return json.loads(value), None
    except json.JSONDecodeError as e:
        return value, f"{what} is a string but not JSON: {e.msg} (column {e.colno})"


def normalize_row(row: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The row with JSON-string `tools` and `arguments` decoded and a missing `content` of a tool-calling assistant
    turn set to "" (so the base validator and the chat template see the usual shapes), plus the decoding problems.
    The input row is not modified."""
    row, problems = dict(row), []
    if "tools" in row:
        row["tools"], reason = _loads(row["tools"], "tools")
        if reason:
            problems.append(("tools", reason))
    for field in CONVERSATION_FIELDS:
        if not data_lib.is_conversational(row.get(field)):
            continue
        messages = []
        for i, m in enumerate(row[field]):
            if isinstance(m, dict) and m.get("tool_calls"):
                m = dict(m, content=m.get("content") or "")
                if isinstance(m["tool_calls"], list):
                    m["tool_calls"] = [_decoded_call(c, f"{field}[{i}].tool_calls[{j}]", problems)
                                       for j, c in enumerate(m["tool_calls"])]
            messages.append(m)
        row[field] = messages
    return row, problems


def _decoded_call(call: Any, where: str, problems: list) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or "arguments" not in fn:
        return call
    args, reason = _loads(fn["arguments"], "arguments")
    if reason:
        problems.append((f"{where}.function.arguments", reason))
    return dict(call, function=dict(fn, arguments=args))


# ----------------------------------------------------------------------------------------------- checks
def check_schema(tool: Any) -> str | None:
    """None if `tool` is a function schema the chat templates can render, else the reason."""
    if not isinstance(tool, dict):
        return f"expected an object, got {type(tool).__name__}"
    if tool.get("type") != "function":
        return f"type must be \"function\", got {tool.get('type')!r}"
    fn = tool.get("function")
    if not isinstance(fn, dict):
        return "function: missing (an object with name, description, parameters)"
    name = fn.get("name")
    if not isinstance(name, str) or not name.replace("_", "a").replace("-", "a").isalnum():
        return f"function.name must be letters, digits, _ or -, got {name!r}"
    if not isinstance(fn.get("description", ""), str):
        return "function.description must be a string"
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type") != "object":
        return "function.parameters must be a JSON schema with type \"object\""
    props = params.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
        return "function.parameters.properties must map each argument name to its schema"
    required = params.get("required", [])
    if not isinstance(required, list) or any(r not in props for r in required):
        return f"function.parameters.required {required!r} must list names from properties {sorted(props)}"
    return None


def check_arguments(schema: dict, arguments: Any) -> str | None:
    """None if `arguments` fit a (valid) function schema: required names present, no unknown names, each value of
    its declared JSON type (and in its `enum`, if any). Else the reason, worded for the model that made the call."""
    fn = schema["function"]
    if not isinstance(arguments, dict):
        return f"arguments of {fn['name']} must be a JSON object, got {type(arguments).__name__}"
    params = fn.get("parameters", {})
    props = params.get("properties", {})
    missing = [r for r in params.get("required", []) if r not in arguments]
    if missing:
        return f"{fn['name']} is missing required argument(s) {missing}"
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        return f"{fn['name']} has no argument(s) {unknown}; it takes {sorted(props)}"
    for key, value in arguments.items():
        spec = props[key]
        types = spec.get("type")
        names = types if isinstance(types, list) else [types] if types else []
        ok = not names or any(isinstance(value, JSON_TYPES.get(t, object)) and not (
            isinstance(value, bool) and t in ("integer", "number")) for t in names)
        if not ok:
            return f"{fn['name']}: argument {key!r} must be {' or '.join(names)}, got {type(value).__name__}"
        if "enum" in spec and value not in spec["enum"]:
            return f"{fn['name']}: argument {key!r} must be one of {spec['enum']}, got {value!r}"
    return None


def _check_call(call: Any, schemas: dict[str, dict] | None) -> tuple[str, str] | None:
    """(field suffix, reason) for a bad entry of an assistant turn's `tool_calls`, else None."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return "", "expected {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}"
    if call.get("type", "function") != "function":
        return ".type", f"must be \"function\", got {call['type']!r}"
    fn = call["function"]
    if not isinstance(fn.get("name"), str):
        return ".function.name", "missing"
    if "arguments" not in fn:
        return ".function.arguments", "missing"
    if schemas is None:  # no tools column: the shapes only
        reason = None if isinstance(fn["arguments"], dict) else "must be a JSON object"
        return (".function.arguments", reason) if reason else None
    if fn["name"] not in schemas:
        return ".function.name", f"{fn['name']!r} is not in this row's tools {sorted(schemas)}"
    reason = check_arguments(schemas[fn["name"]], fn["arguments"])
    return (".function.arguments", reason) if reason else None


def check_conversation(messages: list, field: str, schemas: dict[str, dict] | None,
                       pending: int = 0) -> tuple[list[tuple[str, str]], int]:
    """Problems with the tool calls and tool results of one message list, and the number of calls still awaiting
    a result at its end (`pending` carries them over from a prompt into its completion). A tool result must answer
    a call made earlier: one result per call, each after the assistant turn that made it."""
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue  # the base validator reports it
        where = f"{field}[{i}]"
        if m.get("tool_calls") is not None:
            if m.get("role") != "assistant":
                problems.append((f"{where}.tool_calls", f"only assistant turns call tools, not {m.get('role')!r}"))
            elif not isinstance(m["tool_calls"], list) or not m["tool_calls"]:
                problems.append((f"{where}.tool_calls", "expected a non-empty list of calls"))
            else:
                for j, call in enumerate(m["tool_calls"]):
                    bad = _check_call(call, schemas)
                    if bad:
                        problems.append((f"{where}.tool_calls[{j}]{bad[0]}", bad[1]))
                pending = len(m["tool_calls"])
                continue
        if m.get("role") == "tool":
            if pending == 0:
                problems.append((where, "tool result with no tool call before it to answer"))
            pending = max(0, pending - 1)
        else:
            pending = 0
    return problems, pending


def validate_tool_row(row: dict) -> list[tuple[str, str]]:
    """Problems with a (normalised) row's `tools` column and the tool calls in its conversations, as (field, reason)
    pairs; the base checks (roles, content) are `data.validate_row`'s."""
    problems: list[tuple[str, str]] = []
    schemas = None
    if "tools" in row:
        tools = row["tools"]
        if not isinstance(tools, list):
            return [("tools", f"expected a list of function schemas, got {type(tools).__name__}")]
        schemas = {}
        for i, tool in enumerate(tools):
            reason = check_schema(tool)
            if reason:
                problems.append((f"tools[{i}]", reason))
            elif tool["function"]["name"] in schemas:
                problems.append((f"tools[{i}]", f"duplicate tool name {tool['function']['name']!r}"))
            else:
                schemas[tool["function"]["name"]] = tool
    pending = 0
    for field in CONVERSATION_FIELDS:
        if data_lib.is_conversational(row.get(field)):
            # a completion (or chosen / rejected) continues its prompt: it may answer the prompt's last calls
            found, left = check_conversation(row[field], field, schemas, pending if field != "prompt" else 0)
            problems += found
            pending = left if field == "prompt" else pending
    return problems


# ----------------------------------------------------------------------------------------------- loading
def load_tool_rows(source: str | os.PathLike, split: str = "train", column_map: dict[str, str] | None = None,
                   skip_invalid: bool = False, expect: Sequence[data_lib.DataType] | None = None,
                   stats: dict | None = None) -> list[dict]:
    """`data.load_rows` for rows that may carry tools: every row normalised (`normalize_row`), then checked by the
    base validator and by `validate_tool_row`; problems are reported as `path:line: field: reason`, e.g.
    `train.jsonl:7: messages[2].tool_calls[0].function.arguments: calculator is missing required argument(s)
    ['expression']`. Returns the normalised rows."""
    where, records = _records(source, split)
    records = [(n, _renamed(rec, column_map), err) for n, rec, err in records]
    if not records:
        raise data_lib.DataError(f"{where}: no rows")
    checked = []  # (line, normalised row or None, problems)
    for lineno, rec, err in records:
        if err or not isinstance(rec, dict):
            checked.append((lineno, None, [("<line>", err or f"expected a JSON object, got {type(rec).__name__}")]))
        else:
            row, problems = normalize_row(rec)
            checked.append((lineno, row, problems))
    dtype = data_lib._decide_type([(n, row, None) for n, row, _ in checked if row is not None], where, expect)
    rows, errors, n_bad = [], [], 0
    for lineno, row, problems in checked:
        if row is not None and not problems:
            problems = data_lib.validate_row(row, dtype or data_lib.DataType.LM) + validate_tool_row(row)
        if problems:
            n_bad += 1
            errors += [f"{where}:{lineno}: {f}: {r}" for f, r in problems][:data_lib.MAX_REPORTED - len(errors)]
        else:
            rows.append(row)
    if n_bad and not skip_invalid:
        data_lib._raise(errors, n_bad, where, dtype)
    if not rows:
        raise data_lib.DataError(f"{where}: no valid rows")
    if stats is not None:
        stats.update(type=dtype.value if dtype else None, rows=len(rows), skipped=n_bad)
    return rows


def _records(source: str | os.PathLike, split: str):
    """(where, (line or row number, record, parse error) for each record) of a local file or a Hub dataset id."""
    path = Path(source)
    if path.exists():
        return str(path), data_lib._local_records(path)
    if str(source).startswith((".", "/")) or path.suffix in (".jsonl", ".json", ".csv", ".parquet"):
        raise data_lib.DataError(f"{source}: file not found")
    import datasets

    ds = datasets.load_dataset(str(source), split=split)
    return f"{source}[{split}]", ((i + 1, rec, None) for i, rec in enumerate(ds))


def _renamed(rec: Any, column_map: dict[str, str] | None) -> Any:
    if not column_map or not isinstance(rec, dict):
        return rec
    return {column_map.get(k, k): v for k, v in rec.items()}


# ----------------------------------------------------------------------------------------------- rendering
def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages`, with the tool schemas handed to it (`tools=`) when there are any."""
    return tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                         tokenize=False)


def check_template_renders_tools(tokenizer, tools: list[dict]) -> None:
    """Raise if the tokenizer's chat template ignores `tools=`: the model would then never be told which tools
    exist or how to call them, and every call it made would be a guess."""
    probe = [{"role": "user", "content": "hi"}]
    if tools and render_chat(tokenizer, probe, tools) == render_chat(tokenizer, probe):
        raise data_lib.DataError(
            "the tokenizer's chat template does not render tools (apply_chat_template(tools=...) changes nothing); "
            "use a template with tool support, e.g. Qwen2.5's or Hermes', or set tokenizer.chat_template")


def encode_tool_prompt(tokenizer, prompt: Any, tools: list[dict] | None = None) -> list[int]:
    """Token ids of a prompt (messages, or a string taken as one user turn) with the tool schemas in the template's
    system text, ending in the generation prompt, ready for the policy to continue."""
    messages = prompt if data_lib.is_conversational(prompt) else [{"role": "user", "content": prompt}]
    text = render_chat(tokenizer, messages, tools, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
