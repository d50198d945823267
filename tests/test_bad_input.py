"""Bad input to the training commands: exit 2 with `path:line: field: reason`, never a traceback, before any model
loads; --skip-invalid skips and counts."""

import json
import subprocess
import sys

import pytest

from conftest import write_jsonl

GOOD = {
    "sft": {"prompt": "What is 1 plus 2?", "completion": " 3"},
    "dpo": {"prompt": "What is 1 plus 2?", "chosen": " 3", "rejected": " 4"},
}


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


def malformed(d, command: str) -> dict[str, list[str]]:
    """Write one file per kind of damage into `d`; returns file name -> the messages its error must contain."""
    good = GOOD[command]
    need = "completion" if command == "sft" else "rejected"
    (d / "bad_utf8.jsonl").write_bytes(_line(good) * 2 + b'{"prompt": "caf\xe9"}\n' + _line(good) * 5)
    (d / "wrong_types.jsonl").write_bytes(_line({**good, "prompt": 5}) + _line(good) * 5
                                          + _line({**good, need: [1, 2]}) + b"[1, 2]\n")
    (d / "first_row_missing.jsonl").write_bytes(_line({k: v for k, v in good.items() if k != need}) + _line(good) * 5)
    (d / "empty.jsonl").write_bytes(b"")
    (d / "truncated.jsonl").write_bytes(_line(good) * 5 + b'{"prompt": "What is 1 plus 2?", "compl')
    return {
        "bad_utf8.jsonl": [":3: <line>: not valid UTF-8 (byte 0xe9 at column 16)"],
        "wrong_types.jsonl": [":1: prompt: expected a string or a list of messages, got int",
                              f":7: {need}: message 0 is int, expected an object with role and content",
                              ":8: <row>: expected a JSON object, got list"],
        "first_row_missing.jsonl": [f":1: {need}: missing"],
        "empty.jsonl": [": no rows (the file is empty)"],
        "truncated.jsonl": [":6: <line>: bad JSON: Unterminated string starting at (column 33)"],
    }


def _run(command, model, data, out, *extra):
    args = [command, "--model", str(model), "--data", str(data), "--output-dir", str(out), "--no-progress",
            "--max-steps", "1", "--micro-batch-size", "2", "--max-length", "64", "--threads", "1", *extra]
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_malformed_files_exit_2_with_path_line_field_reason(toy_dir, tmp_path, command):
    expected = malformed(tmp_path, command)
    for name, messages in expected.items():
        path = tmp_path / name
        r = _run(command, toy_dir / "model", path, tmp_path / f"run-{name}")
        assert r.returncode == 2, (name, r.returncode, r.stderr[-3000:])
        assert "Traceback" not in r.stderr, (name, r.stderr[-3000:])
        for m in messages:
            assert f"{path}{m}" in r.stderr, (name, m, r.stderr)
        assert not (tmp_path / f"run-{name}").exists()  # failed on the data, before a model or the run dir


def test_rows_of_a_type_the_trainer_does_not_take(toy_dir, tmp_path):
    """dpo on text rows names a line and the types it takes; sft takes text rows (every token a target)."""
    p = write_jsonl(tmp_path / "text.jsonl", [{"text": "The answer is 3."}] * 4)
    r = _run("dpo", toy_dir / "model", p, tmp_path / "dpo")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{p}:1: this command needs preference or implicit_preference or unpaired_preference data" in r.stderr
    assert "unpaired_preference (prompt, completion, label)" in r.stderr
    r = _run("sft", toy_dir / "model", p, tmp_path / "sft")
    assert r.returncode == 0, r.stderr[-3000:]


def test_skip_invalid_skips_a_bad_byte_and_counts_it(toy_dir, tmp_path):
    malformed(tmp_path, "sft")
    r = _run("sft", toy_dir / "model", tmp_path / "bad_utf8.jsonl", tmp_path / "run", "--skip-invalid")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{tmp_path / 'bad_utf8.jsonl'}: skipped 1 invalid row(s) (--skip-invalid); first: " in r.stdout + r.stderr


class _Payload:
    """Unpickled without weights_only, this would run print(...): a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_tampered_checkpoint_is_refused_in_one_line(toy_dir, tmp_path):
    """A state.pt carrying a pickled callable (its manifest updated to match) is refused with exit 2 and one line
    naming the file; the payload never runs."""
    import torch

    from rlhfkit.engine import checkpoint
    from rlhfkit import models
    from rlhfkit.models.logps import TokenLogprobs

    run = tmp_path / "run"
    tok = models.load_tokenizer(str(toy_dir / "model"))
    path = checkpoint.save(run / "checkpoints", 1, TokenLogprobs(models.load_causal_lm(str(toy_dir / "model"), tok)),
                           {"step": 1})
    torch.save({"step": 1, "optimizer": _Payload()}, path / "state.pt")
    manifest = json.loads((path / checkpoint.MANIFEST).read_text())
    manifest["files"]["state.pt"] = {"sha256": checkpoint.sha256(path / "state.pt"),
                                     "bytes": (path / "state.pt").stat().st_size}
    (path / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint.latest(run / "checkpoints") == path  # the hashes match: only the loader can refuse it
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt: refused to load: .*print"):
        checkpoint.load(path, TokenLogprobs(models.load_causal_lm(str(toy_dir / "model"), tok)))

    r = _run("sft", toy_dir / "model", toy_dir / "sft.jsonl", run, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"{path / 'state.pt'}: refused to load" in err[0], r.stderr
    assert "weights_only=False" not in r.stderr and "PAYLOAD RAN" not in r.stdout + r.stderr


def test_online_trainers_name_a_line_and_the_types_they_take(tmp_path):
    """ppo / grpo read prompts: rows without one (implicit-prompt pairs) are refused at a line, with the types that
    carry a prompt, and a first row missing its prompt is that row's error."""
    from rlhfkit.data import DataError
    from rlhfkit.algorithms.online import load_prompts

    p = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "a b", "rejected": "a c"}] * 3)
    with pytest.raises(DataError, match=rf"{p}:1: this command needs prompt_only or .* it takes prompt_only \(prompt\)"):
        load_prompts(str(p))
    p = write_jsonl(tmp_path / "prompts.jsonl", [{"question": "q"}] + [{"prompt": "q"}] * 3)
    with pytest.raises(DataError, match=rf"{p}:1: prompt: missing"):
        load_prompts(str(p))


def test_grpo_reads_its_prompts_before_any_model(tmp_path):
    """grpo checks its data first: with bad rows and a model path that does not exist, the error is the data's."""
    from rlhfkit.algorithms import grpo
    from rlhfkit.data import DataError

    p = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "a b", "rejected": "a c"}] * 3)
    cfg = grpo.Config(model=str(tmp_path / "no-such-model"), data=str(p), output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match=rf"{p}:1:"):
        grpo.train(cfg)
    assert not (tmp_path / "out").exists()
