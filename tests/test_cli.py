"""Every command and group answers --help (options generated from its Config), and errors are clean."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from rlhfkit.cli.main import COMMANDS, GROUPS, app


@pytest.mark.parametrize("name", sorted(COMMANDS) + sorted(GROUPS))
def test_help(name):
    r = CliRunner().invoke(app, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output and r.exception is None or isinstance(r.exception, SystemExit)


def test_usage_errors_are_not_tracebacks(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n' * 8)
    for args in (["sft", "--model", "m", "--data", "d", "--max-steps", "two"], ["label", "bogus"],
                 ["sft", "--model", str(tmp_path), "--data", str(tmp_path / "missing.jsonl")],
                 ["sft", "--model", str(tmp_path), "--data", str(tmp_path / "d.jsonl")]):
        r = subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", *args], capture_output=True, text=True)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert "rror" in r.stderr, (args, r.stderr)


def test_bench_stdout_is_one_json_line(toy_dir, tmp_path):
    """`rlhfkit bench` prints exactly one JSON line on stdout (the trainer's own messages go to stderr), so
    `rlhfkit bench ... > result.json` is always parseable; the same line is appended to --results."""
    import json

    from conftest import toy_rows, write_jsonl

    rows = toy_rows(32)
    write_jsonl(tmp_path / "pref.jsonl", [{"prompt": r["prompt"], "chosen": r["completion"],
                                          "rejected": rows[(i + 1) % len(rows)]["completion"]}
                                         for i, r in enumerate(rows)])
    args = ["bench", "dpo", "--model", str(toy_dir / "model"), "--data", str(tmp_path / "pref.jsonl"), "--steps", "2",
            "--batch", "2", "--max-length", "64", "--threads", "1", "--results", str(tmp_path / "r.jsonl")]
    r = subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dpo:" in r.stderr  # the trainer did talk, on stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    res = json.loads(lines[0])
    assert res["trainer"] == "dpo" and res["steps"] == 2 and res["samples"] == 4 and res["peak_gpu_mib"] is None
    assert json.loads((tmp_path / "r.jsonl").read_text()) == res
