"""`rlhfkit sample`: K responses per prompt into a candidates file that labelling accepts."""

import json

import pytest

from conftest import toy_rows, write_jsonl
from rlhfkit import data as data_lib
from rlhfkit.rollout import generate, sample
from rlhfkit import models
from rlhfkit.world import label


def test_sample_writes_k_responses_per_prompt(toy_dir, tmp_path):
    rows = [{"prompt": r["prompt"], "id": i} for i, r in enumerate(toy_rows(5))]
    rows[0] = {"prompt": "What is 1 plus 2?", "id": 0}  # a plain-string prompt stays a string
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = sample.Config(model=str(toy_dir / "model"), prompts=str(tmp_path / "prompts.jsonl"),
                        output=str(tmp_path / "cand.jsonl"), num_responses=3, max_new_tokens=6, batch_size=4)
    out = sample.run(cfg)
    got = data_lib.read_jsonl(out)
    assert [g["id"] for g in got] == list(range(5)) and [g["prompt"] for g in got] == [r["prompt"] for r in rows]
    assert all(len(g["responses"]) == 3 and all(isinstance(x, str) for x in g["responses"]) for g in got)
    assert all(len(g["finished"]) == 3 for g in got)
    assert data_lib.load_rows(out, expect=[data_lib.DataType.CANDIDATES])  # validates as a candidates file
    # exactly what generate draws with the same seed, regrouped per prompt
    tok = models.load_tokenizer(str(toy_dir / "model"))
    model = models.load_causal_lm(str(toy_dir / "model"), tok)
    flat = generate.generate_rows(model, tok, rows, sample.generate_config(cfg), progress=False)
    assert [data_lib.completion_text(f["completion"]) for f in flat] == [x for g in got for x in g["responses"]]
    assert sample.run(cfg) and data_lib.read_jsonl(out) == got  # seeded: same candidates again
    # labelling consumes it: 3 responses -> ranking gives 3 pairs per prompt, grouped
    prefs, counts = label.label_rows(got, label.Config(mode="ranking", ties="keep"))
    assert counts["pairs"] == 15 and {p["group"] for p in prefs} == set(range(5))


def test_sample_needs_two_responses():
    with pytest.raises(ValueError, match="num_responses"):
        sample.Config(model="m", prompts="p", num_responses=1).validate()
