"""Datasets: loading, validation, TRL dataset types, tokenisation and collation.

Formats are TRL's, in standard (strings) or conversational (`[{"role", "content"}]`) form, detected from the
columns:
    language modelling      text | messages
    prompt-only             prompt
    prompt-completion       prompt, completion
    preference              prompt, chosen, rejected      (explicit prompt)
                            chosen, rejected              (implicit prompt: the shared prefix is the prompt)
    unpaired preference     prompt, completion, label
Bad input is reported as `path:line: field: reason` before anything is trained, and nothing is dropped silently:
`skip_invalid` skips bad rows and counts them.
"""

from __future__ import annotations

import enum
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 10


class DataType(str, enum.Enum):
    LM = "language_modeling"
    PROMPT = "prompt_only"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"
    IMPLICIT_PREFERENCE = "implicit_preference"
    UNPAIRED = "unpaired_preference"
    CANDIDATES = "candidates"  # {prompt, responses: [...]}: rlhfkit sample output, input to labelling


# The fields each type needs, and which of them hold text (a string or a message list).
_FIELDS: dict[DataType, tuple[str, ...]] = {
    DataType.UNPAIRED: ("prompt", "completion", "label"),
    DataType.PREFERENCE: ("prompt", "chosen", "rejected"),
    DataType.IMPLICIT_PREFERENCE: ("chosen", "rejected"),
    DataType.CANDIDATES: ("prompt", "responses"),
    DataType.PROMPT_COMPLETION: ("prompt", "completion"),
    DataType.PROMPT: ("prompt",),
}


class DataError(ValueError):
    """Invalid input, with `path:line: field: reason` for the first few problems."""


def detect_type(columns: Iterable[str]) -> DataType:
    cols = set(columns)
    for dtype, fields in _FIELDS.items():  # ordered most specific first
        if set(fields) <= cols:
            return dtype
    if "text" in cols or "messages" in cols:
        return DataType.LM
    raise DataError(
        f"cannot tell the dataset type from columns {sorted(cols)}; expected one of: text | messages | prompt | "
        "prompt+completion | prompt+chosen+rejected | chosen+rejected | prompt+completion+label "
        "(use --column-map to rename, e.g. question=prompt)"
    )


def is_conversational(value: Any) -> bool:
    return isinstance(value, list) and (not value or isinstance(value[0], dict))


def _check_text(value: Any, field: str) -> str | None:
    """None if `value` is a valid string or message list, else the reason."""
    if isinstance(value, str):
        return None if value.strip() or field in ("completion", "chosen", "rejected") else "empty string"
    if isinstance(value, list):
        if not value:
            return "empty message list"
        for i, m in enumerate(value):
            if not isinstance(m, dict):
                return f"message {i} is {type(m).__name__}, expected an object with role and content"
            if m.get("role") not in ROLES:
                return f"message {i}: role {m.get('role')!r} is not one of {list(ROLES)}"
            if not isinstance(m.get("content"), str):
                return f"message {i}: content must be a string"
        return None
    if value is None:
        return "missing"
    return f"expected a string or a list of messages, got {type(value).__name__}"


def validate_row(row: Any, dtype: DataType) -> list[tuple[str, str]]:
    """Problems with one row as (field, reason) pairs."""
    if not isinstance(row, dict):
        return [("<row>", f"expected a JSON object, got {type(row).__name__}")]
    problems = []
    fields = _FIELDS.get(dtype) or (("messages",) if "messages" in row else ("text",))
    for f in fields:
        if f not in row or row[f] is None:
            problems.append((f, "missing"))
        elif f == "label":
            if not isinstance(row[f], bool):
                problems.append((f, f"expected true/false, got {row[f]!r}"))
        elif f == "responses":
            if not isinstance(row[f], list) or len(row[f]) < 2:
                problems.append((f, "expected a list of at least 2 responses"))
            else:
                for i, r in enumerate(row[f]):
                    reason = _check_text(r, "completion")
                    if reason:
                        problems.append((f"{f}[{i}]", reason))
        else:
            reason = _check_text(row[f], f)
            if reason:
                problems.append((f, reason))
    if dtype == DataType.IMPLICIT_PREFERENCE and not problems and not implicit_prompt_split(row)[0]:
        problems.append(("chosen/rejected", "chosen and rejected share no common prompt prefix"))
    return problems


def _raise(errors: list[str], total: int, path: str, dtype: DataType | None = None) -> None:
    more = f"\n... and {total - len(errors)} more" if total > len(errors) else ""
    read_as = f" (read as {describe(dtype)})" if dtype else ""
    raise DataError(
        f"{total} invalid row(s) in {path}{read_as}:\n" + "\n".join(errors) + more
        + "\n(use --skip-invalid to skip and count them)"
    )


def _decode(raw: bytes) -> tuple[str | None, int, str]:
    """(text, 0, "") or, at the first byte that is not UTF-8, (None, its line, the reason). The column counts
    characters, as JSON's own errors do."""
    try:
        return raw.decode("utf-8"), 0, ""
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[start:e.start].decode("utf-8")) + 1
        return None, raw.count(b"\n", 0, e.start) + 1, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column})"


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except (OSError, EOFError) as e:  # unreadable, or a corrupt or truncated .gz
        raise DataError(f"{path}: cannot read: {e}") from None


def _read_json_lines(path: Path) -> Iterable[tuple[int, Any, str | None]]:
    # Bytes, decoded line by line: one bad byte is that line's problem (skippable), not the whole file's.
    try:
        with _open(path) as f:
            for lineno, raw in enumerate(f, 1):
                record = _json_line(lineno, raw)
                if record is not None:
                    yield record
    except (OSError, EOFError) as e:  # unreadable, or a corrupt or truncated .gz
        raise DataError(f"{path}: cannot read: {e}") from None


def _json_line(lineno: int, raw: bytes) -> tuple[int, Any, str | None] | None:
    line, _, reason = _decode(raw.rstrip(b"\r\n"))
    if line is None:
        return lineno, None, reason
    if lineno == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not line.strip():
        return None
    try:
        return lineno, json.loads(line), None
    except json.JSONDecodeError as e:
        # Parsed without its newline, so a truncated record points where it stops (not at "column 1" of an
        # imaginary next line).
        return lineno, None, f"bad JSON: {e.msg} (column {e.colno})"


def _local_records(path: Path) -> Iterable[tuple[int, Any, str | None]]:
    """(line or row number, record, parse error) for a local file of any supported kind."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".jsonl":
        yield from _read_json_lines(path)
    elif kind == ".json":
        raw = _read_bytes(path)
        text, lineno, reason = _decode(raw)
        if text is None:  # still parsed, to tell JSON lines (a bad line is skippable) from one JSON document
            text = raw.decode("utf-8", errors="replace")
        text = text.removeprefix("\ufeff")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("{"):  # a .json file that is really JSON lines
                yield from _read_json_lines(path)
                return
            yield (lineno, None, reason) if reason else (e.lineno, None, f"bad JSON: {e.msg} (column {e.colno})")
            return
        if reason:
            yield lineno, None, reason
            return
        if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            yield 1, None, f"expected a list of objects, got {type(data).__name__}"
            return
        for i, rec in enumerate(data, 1):
            yield i, rec, None
    elif kind in (".parquet", ".csv"):
        import datasets

        if kind == ".csv":  # name the line of a bad byte; the CSV reader would only say the file has one
            _, lineno, reason = _decode(_read_bytes(path))
            if reason:
                yield lineno, None, reason
                return
        try:
            ds = datasets.load_dataset(kind[1:], data_files=str(path), split="train")
        except Exception as e:  # the reader's own message, without its traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"{path}: cannot read as {kind[1:]}: {first}") from None
        offset = 2 if kind == ".csv" else 1  # CSV: line 1 is the header
        for i, rec in enumerate(ds):
            yield i + offset, rec, None
    else:
        raise DataError(f"{path}: unsupported file type (use .jsonl, .json, .parquet or .csv, optionally .gz)")


def describe(dtype: DataType) -> str:
    """A type with the fields it needs, e.g. `preference (prompt, chosen, rejected)`."""
    return f"{dtype.value} ({', '.join(_FIELDS[dtype]) if dtype in _FIELDS else 'text | messages'})"


def _decide_type(records: list[tuple[int, Any, str | None]], where: str,
                 expect: Sequence[DataType] | None) -> DataType | None:
    """The dataset's type: the commonest among its rows' types (of those `expect` allows). One odd row, the first
    one included, is then that row's problem, reported at its line; it does not decide the type of the file."""
    counts: dict[DataType, int] = {}  # in order of first appearance, so a tie goes to the type seen first
    first: dict[DataType, tuple[int, list[str]]] = {}
    undetected: tuple[int, DataError] | None = None
    for lineno, rec, parse_error in records:
        if parse_error is not None or not isinstance(rec, dict):
            continue
        try:
            dtype = detect_type(rec.keys())
        except DataError as e:
            undetected = undetected or (lineno, e)
            continue
        counts[dtype] = counts.get(dtype, 0) + 1
        first.setdefault(dtype, (lineno, sorted(rec)))
    allowed = [t for t in counts if not expect or t in expect]
    if allowed:
        return max(allowed, key=counts.__getitem__)
    if counts:  # no row has a type this command takes: one message for the file, not one per row
        dtype = max(counts, key=counts.__getitem__)
        lineno, cols = first[dtype]
        raise DataError(
            f"{where}:{lineno}: this command needs {' or '.join(t.value for t in expect)} data, but the columns "
            f"{cols} are {dtype.value} (as are {counts[dtype]} of {len(records)} rows); it takes "
            + "; ".join(describe(t) for t in expect) + " (use --column-map to rename columns, e.g. answer=completion)"
        )
    if undetected:
        raise DataError(f"{where}:{undetected[0]}: {undetected[1]}")
    return None


def load_rows(
    source: str | os.PathLike,
    split: str = "train",
    column_map: dict[str, str] | None = None,
    skip_invalid: bool = False,
    expect: Sequence[DataType] | None = None,
    stats: dict | None = None,
) -> list[dict]:
    """Read, rename, type-check and validate every row of a local file or a Hugging Face dataset id.

    The type is the commonest among the rows (limited to `expect`, the types the caller takes); every row is
    then checked against it. Raises DataError listing `path:line: field: reason` for the first problems (or skips
    and counts them). `stats` (optional dict) receives `type`, `rows`, `skipped`.
    """
    path = Path(source)
    if path.exists():
        records = _local_records(path)
        where = str(path)
    else:
        if str(source).startswith((".", "/")) or Path(source).suffix in (".jsonl", ".json", ".csv", ".parquet"):
            raise DataError(f"{source}: file not found")
        import datasets  # a hub dataset id: the same checks apply after download

        ds = datasets.load_dataset(str(source), split=split)
        records = ((i + 1, rec, None) for i, rec in enumerate(ds))
        where = f"{source}[{split}]"
    if column_map:
        records = ((lineno, {column_map.get(k, k): v for k, v in rec.items()} if isinstance(rec, dict) else rec, err)
                   for lineno, rec, err in records)
    records = list(records)
    if not records:
        raise DataError(f"{where}: no rows (the {'file' if path.exists() else 'split'} is empty)")
    dtype = _decide_type(records, where, expect)
    rows, errors, n_bad = [], [], 0
    for lineno, rec, parse_error in records:
        if not parse_error and _has_tools(rec):  # JSON-string schemas decoded, a call-only turn's content ""
            from rlhfkit.data import tools as tool_data

            rec, problems = tool_data.normalize_row(rec)
            problems = problems or validate_row(rec, dtype or DataType.LM) + tool_data.validate_tool_row(rec)
        else:
            problems = [("<line>", parse_error)] if parse_error else validate_row(rec, dtype or DataType.LM)
        if problems:
            n_bad += 1
            for field, reason in problems:
                if len(errors) < MAX_REPORTED:
                    errors.append(f"{where}:{lineno}: {field}: {reason}")
            continue
        rows.append(rec)
    if n_bad and not skip_invalid:
        _raise(errors, n_bad, where, dtype)
    if not rows:
        raise DataError(f"{where}: no valid rows")
    if stats is not None:
        stats.update(type=dtype.value if dtype else None, rows=len(rows), skipped=n_bad)
    if n_bad:
        print(f"{where}: skipped {n_bad} invalid row(s) (--skip-invalid); first: {errors[0]}")
    return rows


def _has_tools(rec: Any) -> bool:
    """A row in TRL's tool-calling format: a `tools` column, or messages that call tools or answer calls."""
    return isinstance(rec, dict) and ("tools" in rec or any(
        isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool")
        for f in ("messages", "prompt", "completion") if isinstance(rec.get(f), list) for m in rec[f]))


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows atomically: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    return [rec for _, rec, _ in _read_json_lines(Path(path))]


# ----------------------------------------------------------------------------------------------- text helpers
def implicit_prompt_split(row: dict) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) from an implicit-prompt row: the prompt is the longest shared prefix.

    Conversational rows share whole leading messages; the responses must then be the remaining turns.
    Returns a falsy prompt when the two share nothing (PITFALLS: check they really share it).
    """
    chosen, rejected = row["chosen"], row["rejected"]
    if is_conversational(chosen):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    n = len(os.path.commonprefix([chosen, rejected]))
    # Cut back to a word boundary so a response that starts with the same letters keeps them.
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def prompt_text(prompt: Any) -> str:
    """The last user message of a conversational prompt, or the prompt string itself."""
    if is_conversational(prompt):
        users = [m["content"] for m in prompt if m["role"] == "user"]
        return users[-1] if users else prompt[-1]["content"]
    return prompt


def completion_text(completion: Any) -> str:
    if is_conversational(completion):
        return "".join(m["content"] for m in completion if m["role"] == "assistant")
    return completion


def as_completion(prompt: Any, text: str) -> Any:
    """A response string in the same representation as its prompt (messages for conversational prompts)."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


# ----------------------------------------------------------------------------------------------- tokenisation
def encode_prompt(tokenizer, prompt: Any, tools: list[dict] | None = None) -> list[int]:
    """Token ids of a prompt, ready for the model to continue (chat template with the generation prompt; the tool
    schemas, if any, rendered as the template renders them)."""
    if is_conversational(prompt) or tools:
        prompt = prompt if is_conversational(prompt) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(prompt, tools=tools or None, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def encode_completion(tokenizer, prompt: Any, completion: Any, tools: list[dict] | None = None) -> list[int]:
    """Token ids of a completion, ending in exactly one EOS (appended if the template did not emit it).

    Prompt and completion are tokenised separately so the boundary is exact: with BPE, tokenising the
    concatenation can merge across it and shift the loss mask by a token.
    """
    eos = tokenizer.eos_token_id
    if is_conversational(prompt) or is_conversational(completion) or tools:
        msgs_p = prompt if is_conversational(prompt) else [{"role": "user", "content": prompt}]
        msgs_c = completion if is_conversational(completion) else [{"role": "assistant", "content": completion}]
        tools = tools or None
        p_text = tokenizer.apply_chat_template(msgs_p, tools=tools, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(msgs_p + msgs_c, tools=tools, tokenize=False)
        if not full.startswith(p_text):
            raise DataError("chat template does not render the prompt as a prefix of prompt+completion")
        ids = tokenizer(full[len(p_text):], add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if eos in ids:
        ids = ids[: len(ids) - ids[::-1].index(eos)]  # drop template text after the final EOS (e.g. newlines)
    else:
        ids = ids + [eos]
    return ids


def truncate_pair(prompt_ids: list[int], completion_ids: list[int], max_length: int, max_prompt_length: int = 0,
                  counter: dict | None = None) -> tuple[list[int], list[int]]:
    """Fit prompt+completion into max_length: the prompt is cut from the LEFT first (the response is what we
    train on), the completion from the right only if it alone is too long. Every cut is counted, never hidden."""
    if max_prompt_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        _count(counter, "prompt_truncated")
    over = len(prompt_ids) + len(completion_ids) - max_length
    if over > 0:
        keep_prompt = max(1, len(prompt_ids) - over)
        if keep_prompt < len(prompt_ids):
            prompt_ids = prompt_ids[-keep_prompt:]
            _count(counter, "prompt_truncated")
        room = max_length - len(prompt_ids)
        if len(completion_ids) > room:
            completion_ids = completion_ids[:room]
            _count(counter, "completion_truncated")
    return prompt_ids, completion_ids


def _count(counter: dict | None, key: str) -> None:
    if counter is not None:
        counter[key] = counter.get(key, 0) + 1


@dataclass
class Example:
    """One tokenised sequence: the loss (or score) covers positions where `loss_mask` is True."""

    input_ids: list[int]
    loss_mask: list[bool]


def sft_example(tokenizer, row: dict, max_length: int, counter: dict | None = None) -> Example:
    tools = row.get("tools") or None  # TRL's tool-calling rows: the schemas are part of every rendering
    if "messages" in row:  # conversational LM row: loss on every assistant turn
        return messages_example(tokenizer, row["messages"], max_length, counter, tools)
    p = encode_prompt(tokenizer, row["prompt"], tools)
    c = encode_completion(tokenizer, row["prompt"], row["completion"], tools)
    p, c = truncate_pair(p, c, max_length, counter=counter)
    return Example(p + c, [False] * len(p) + [True] * len(c))


def messages_example(tokenizer, messages: list[dict], max_length: int, counter: dict | None = None,
                     tools: list[dict] | None = None) -> Example:
    """Loss on assistant turns only (their tool calls included; tool results and user turns are context): each turn
    is rendered as the prefix difference of the chat template, with the tool schemas when there are any."""
    ids: list[int] = []
    mask: list[bool] = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            c = encode_completion(tokenizer, messages[:i], [m], tools)
            ids += c
            mask += [True] * len(c)
        else:
            prefix = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False) if i else ""
            upto = tokenizer.apply_chat_template(
                messages[: i + 1], tools=tools, tokenize=False,
                add_generation_prompt=i + 1 < len(messages) and messages[i + 1]["role"] == "assistant",
            )
            piece = tokenizer(upto[len(prefix):], add_special_tokens=False)["input_ids"]
            ids += piece
            mask += [False] * len(piece)
    if len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
        _count(counter, "completion_truncated")
    return Example(ids, mask)


def lm_example(tokenizer, row: dict) -> list[int]:
    """Token ids of a language-modelling row (text, or a whole conversation), ending with EOS."""
    if "messages" in row:
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(row["text"])["input_ids"]
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def pack(sequences: Iterable[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate documents and cut into full blocks (pretraining packing; the ragged tail is dropped)."""
    buf: list[int] = []
    blocks = []
    for ids in sequences:
        buf.extend(ids)
        while len(buf) >= block_size:
            blocks.append(buf[:block_size])
            buf = buf[block_size:]
    return blocks


def preference_parts(row: dict) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of an explicit or implicit preference row."""
    if "prompt" in row:
        return row["prompt"], row["chosen"], row["rejected"]
    return implicit_prompt_split(row)


# ----------------------------------------------------------------------------------------------- collation
def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, masks: Sequence[Sequence[bool]] | None = None):
    """Right-pad to the longest sequence: (input_ids, attention_mask, loss_mask), each (B, T)."""
    T = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.bool)
    loss = torch.zeros((B, T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[i, : len(s)] = True
        if masks is not None:
            loss[i, : len(s)] = torch.tensor(masks[i], dtype=torch.bool)
    return input_ids, attention, loss


def pack_rows(examples: Sequence[Example], max_length: int, pad_id: int):
    """Padding-free batching: first-fit pack examples into rows of at most `max_length` tokens.

    Returns (input_ids, loss_mask, position_ids), each (R, T). Position ids restart at 0 for every example (and
    for the padded tail of a row, which forms its own segment), which makes transformers use a block-diagonal
    causal mask: an example never sees its neighbours. The first token of each example is never a target
    (the loss convention predicts token t+1 from t, and t would belong to the previous example).
    """
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e.input_ids)):
        for i, r in enumerate(room):
            if len(ex.input_ids) <= r:
                rows[i].append(ex)
                room[i] -= len(ex.input_ids)
                break
        else:
            rows.append([ex])
            room.append(max(0, max_length - len(ex.input_ids)))
    T = max(sum(len(e.input_ids) for e in r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    pos = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        t = 0
        for ex in r:
            n = len(ex.input_ids)
            ids[i, t : t + n] = torch.tensor(ex.input_ids)
            mask[i, t + 1 : t + n] = torch.tensor(ex.loss_mask[1:], dtype=torch.bool)
            pos[i, t : t + n] = torch.arange(n)
            t += n
        pos[i, t:] = torch.arange(T - t)
    return ids, mask, pos


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int):
    """Left-pad prompts for generation (PITFALLS PPO #6): (input_ids, attention_mask)."""
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            input_ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            attention[i, T - len(s):] = True
    return input_ids, attention
