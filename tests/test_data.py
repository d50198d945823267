"""Data: validation with path:line: field: reason, type detection, formats, exact SFT loss masks, truncation."""

import json

import pytest

from conftest import toy_rows, write_jsonl
from rlhfkit import data as D


def test_detect_types():
    assert D.detect_type(["text"]) == D.DataType.LM
    assert D.detect_type(["messages"]) == D.DataType.LM
    assert D.detect_type(["prompt"]) == D.DataType.PROMPT
    assert D.detect_type(["prompt", "completion"]) == D.DataType.PROMPT_COMPLETION
    assert D.detect_type(["prompt", "chosen", "rejected"]) == D.DataType.PREFERENCE
    assert D.detect_type(["chosen", "rejected"]) == D.DataType.IMPLICIT_PREFERENCE
    assert D.detect_type(["prompt", "completion", "label"]) == D.DataType.UNPAIRED
    with pytest.raises(D.DataError, match="column-map"):
        D.detect_type(["question", "answer"])


def test_validator_reports_path_line_field_reason(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"prompt": "hi", "completion": "there"}\n'
        '{"prompt": "hi", "completion": "there"\n'  # line 2: bad JSON
        '{"prompt": "", "completion": "x"}\n'  # line 3: empty prompt
        '{"prompt": [{"role": "robot", "content": "x"}], "completion": "y"}\n'  # line 4: wrong role
        '{"prompt": "ok", "completion": 5}\n'  # line 5: wrong type
        '{"prompt": "ok"}\n'  # line 6: missing completion
    )
    with pytest.raises(D.DataError) as e:
        D.load_rows(p)
    msg = str(e.value)
    assert f"{p}:2: <line>: bad JSON" in msg
    assert f"{p}:3: prompt: empty string" in msg
    assert f"{p}:4: prompt: message 0: role 'robot'" in msg
    assert f"{p}:5: completion: expected a string or a list of messages, got int" in msg
    assert f"{p}:6: completion: missing" in msg
    assert p.read_text().count("\n") == 6  # nothing lost from the file
    stats = {}
    rows = D.load_rows(p, skip_invalid=True, stats=stats)
    assert len(rows) == 1 and stats == {"type": "prompt_completion", "rows": 1, "skipped": 5}


def test_column_map_json_csv_parquet(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    write_jsonl(tmp_path / "r.jsonl", rows)
    (tmp_path / "r.json").write_text(json.dumps(rows))
    import datasets

    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "r.csv"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "r.parquet"))
    cmap = {"question": "prompt", "answer": "completion"}
    for ext in ("jsonl", "json", "csv", "parquet"):
        got = D.load_rows(tmp_path / f"r.{ext}", column_map=cmap)
        assert [r["prompt"] for r in got] == [f"q{i}" for i in range(5)], ext
        assert got[0]["completion"] == "a0"


def test_hub_path_is_used_for_non_files(monkeypatch):
    """Dataset ids go through datasets.load_dataset (tested offline with a stub), then the same checks apply."""
    import datasets

    calls = {}

    def fake_load(name, split):
        calls["args"] = (name, split)
        return datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}, {"prompt": "", "completion": "c"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(D.DataError, match=r"org/data\[test\]:2: prompt: empty string"):
        D.load_rows("org/data", split="test")
    assert calls["args"] == ("org/data", "test")


def test_expect_type_mismatch_is_named(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(D.DataError, match="needs language_modeling data.*prompt_only"):
        D.load_rows(p, expect=[D.DataType.LM])


def test_implicit_prompt_extraction():
    row = {"chosen": "Human: hi there Assistant: hello", "rejected": "Human: hi there Assistant: go away"}
    p, c, r = D.implicit_prompt_split(row)
    assert p == "Human: hi there Assistant: " and c == "hello" and r == "go away"
    conv = {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
    }
    p, c, r = D.implicit_prompt_split(conv)
    assert p == [{"role": "user", "content": "q"}] and c[0]["content"] == "good" and r[0]["content"] == "bad"
    assert D.validate_row({"chosen": "abc", "rejected": "xyz"}, D.DataType.IMPLICIT_PREFERENCE)


def test_sft_mask_is_exact(toy_dir):
    """Loss mask = exactly the completion tokens + EOS; prompt (incl. the <|assistant|> header) is masked."""
    from rlhfkit import models

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    row = toy_rows(1)[0]
    ex = D.sft_example(tok, row, max_length=512)
    text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|user|>") and text.endswith("<|end|><|assistant|>")
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    n_p = len(prompt_ids)
    assert ex.input_ids[:n_p] == list(prompt_ids)
    assert ex.loss_mask == [False] * n_p + [True] * (len(ex.input_ids) - n_p)
    completion = tok.decode(ex.input_ids[n_p:-1])
    assert completion == row["completion"][0]["content"]
    assert ex.input_ids[-1] == tok.eos_token_id and ex.input_ids.count(tok.eos_token_id) == 1
    # standard (string) rows get EOS appended too
    ex2 = D.sft_example(tok, {"prompt": "What is 1 plus 1?", "completion": " 2"}, 512)
    assert ex2.input_ids[-1] == tok.eos_token_id and ex2.loss_mask[-1]
    assert tok.pad_token_id != tok.eos_token_id


def test_truncation_keeps_completion_and_counts():
    counter = {}
    p, c = D.truncate_pair(list(range(10)), [100, 101, 102], max_length=6, counter=counter)
    assert c == [100, 101, 102] and p == [7, 8, 9]  # prompt cut from the left
    p, c = D.truncate_pair([1, 2], list(range(100, 110)), max_length=5, counter=counter)
    assert p == [2] and c == [100, 101, 102, 103]
    assert counter == {"prompt_truncated": 2, "completion_truncated": 1}


def test_messages_example_masks_every_assistant_turn(toy_dir):
    from rlhfkit import models

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    msgs = [{"role": "user", "content": "What is 1 plus 2?"}, {"role": "assistant", "content": "The answer is 3."},
            {"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "The answer is 4."}]
    ex = D.messages_example(tok, msgs, 512)
    full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ex.input_ids == full
    trained = tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m], skip_special_tokens=True)
    assert trained == "The answer is 3.The answer is 4."


def test_pack_and_padding():
    blocks = D.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks == [[1, 2, 3, 4], [5, 6, 7, 8]]
    ids, att, loss = D.pad_right([[1, 2, 3], [4]], 0, [[False, True, True], [True]])
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and att.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert loss.tolist() == [[False, True, True], [True, False, False]]
    ids, att = D.pad_left([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and att.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_utf8_is_a_line_error_and_skippable(tmp_path):
    """A byte that is not UTF-8 is its line's problem: `path:line: <line>: not valid UTF-8 (byte, column)`, where
    the column counts characters (the 'é' before it is one character, two bytes)."""
    good = '{"prompt": "p", "completion": "c"}\n'
    bad = ('{"prompt": "' + "a" * 297).encode() + b"\xe9" + b'", "completion": "c"}\n'  # column 12 + 297 + 1
    bad2 = '{"prompt": "é'.encode() + b"\xff" + b'", "completion": "c"}\n'
    for name, opener in (("d.jsonl", open), ("d.jsonl.gz", __import__("gzip").open)):
        p = tmp_path / name
        with opener(p, "wb") as f:
            f.write(good.encode() * 2 + bad + good.encode() + bad2)
        with pytest.raises(D.DataError) as e:
            D.load_rows(p)
        assert f"{p}:3: <line>: not valid UTF-8 (byte 0xe9 at column 310)" in str(e.value)
        assert f"{p}:5: <line>: not valid UTF-8 (byte 0xff at column 14)" in str(e.value)
        stats = {}
        assert len(D.load_rows(p, skip_invalid=True, stats=stats)) == 3 and stats["skipped"] == 2
    p = tmp_path / "d.json"  # one JSON document: the line and column of the byte within it
    p.write_bytes(b'[\n {"prompt": "p", "completion": "c"},\n {"prompt": "\xe9", "completion": "c"}\n]\n')
    with pytest.raises(D.DataError, match=r"d\.json:3: <line>: not valid UTF-8 \(byte 0xe9 at column 14\)"):
        D.load_rows(p)


def test_truncated_json_line_gives_the_column_where_it_stops(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "c\n{"prompt": "p", "compl\n'
                 '{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "c"}')
    with pytest.raises(D.DataError) as e:
        D.load_rows(p)
    msg = str(e.value)
    assert f"{p}:2: <line>: bad JSON: Unterminated string starting at (column 31)" in msg, msg
    assert f"{p}:3: <line>: bad JSON: Unterminated string starting at (column 17)" in msg, msg
    assert "column 1)" not in msg


def test_type_is_decided_by_the_rows_not_the_first_one(tmp_path):
    """The first row missing a field is that row's error, at its line; the file's type is its rows' commonest."""
    rows = [{"prompt": "p", "completion": "c"}] * 5
    p = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p"}] + rows)
    sft_types = [D.DataType.PROMPT_COMPLETION, D.DataType.LM, D.DataType.PREFERENCE]
    with pytest.raises(D.DataError) as e:
        D.load_rows(p, expect=sft_types)
    assert f"{p}:1: completion: missing" in str(e.value) and "read as prompt_completion" in str(e.value)
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 5
    p = write_jsonl(tmp_path / "dpo.jsonl", [{"prompt": "p", "chosen": "a"}] + pairs)
    dpo_types = [D.DataType.PREFERENCE, D.DataType.IMPLICIT_PREFERENCE, D.DataType.UNPAIRED]
    with pytest.raises(D.DataError, match=rf"{p}:1: rejected: missing"):
        D.load_rows(p, expect=dpo_types)
    stats = {}
    assert len(D.load_rows(p, expect=dpo_types, skip_invalid=True, stats=stats)) == 5
    assert stats == {"type": "preference", "rows": 5, "skipped": 1}
    # no row of a type the caller takes: one message naming a line and every type it takes, with their fields
    p = write_jsonl(tmp_path / "text.jsonl", [{"text": "t"}] * 3)
    with pytest.raises(D.DataError) as e:
        D.load_rows(p, expect=dpo_types)
    assert f"{p}:1: this command needs preference or implicit_preference or unpaired_preference data" in str(e.value)
    assert "preference (prompt, chosen, rejected); implicit_preference (chosen, rejected)" in str(e.value)


def test_empty_and_odd_files_are_errors_not_tracebacks(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(D.DataError, match=r"e\.jsonl: no rows \(the file is empty\)"):
        D.load_rows(tmp_path / "e.jsonl")
    (tmp_path / "n.json").write_text("5")
    with pytest.raises(D.DataError, match=r"n\.json:1: <line>: expected a list of objects, got int"):
        D.load_rows(tmp_path / "n.json")
    (tmp_path / "z.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(D.DataError, match=r"z\.jsonl\.gz: cannot read: "):
        D.load_rows(tmp_path / "z.jsonl.gz")
