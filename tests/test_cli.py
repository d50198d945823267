"""Every command and group answers --help (options generated from its Config), and errors are clean."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from rlhfkit.cli import COMMANDS, GROUPS, app


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
        r = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert "rror" in r.stderr, (args, r.stderr)
