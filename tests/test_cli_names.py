"""One name per concept on the command line: a destination directory is --output-dir, a destination file is
--output, in every command. The older spellings (--out, --out-dir) are aliases of the same option: both write the
same files, and --help names the canonical one first."""

import json

import click
import pytest
from click.testing import CliRunner

from rlhfkit.cli.main import app


def _params(args: list[str]) -> dict:
    """The parsed options of `rlhfkit ARGS` (the command is resolved, not run)."""
    ctx = click.Context(app)
    name, cmd, rest = app.resolve_command(ctx, args)
    if isinstance(cmd, click.Group):
        name, cmd, rest = cmd.resolve_command(ctx, rest)
    return cmd.make_context(name, list(rest)).params


@pytest.mark.parametrize("canonical, alias", [("--output-dir", "--out")])
def test_demo_output_dir_and_its_alias_parse_to_the_same_field(canonical, alias):
    assert _params(["demo", canonical, "runs/x"])["out"] == "runs/x"
    assert _params(["demo", alias, "runs/x"])["out"] == "runs/x"
    shown = CliRunner().invoke(app, ["demo", "--help"]).output
    assert "--output-dir, --out" in shown


@pytest.mark.parametrize("flag", ["--output-dir", "--out-dir"])
def test_world_export_writes_to_either_spelling(tmp_path, flag):
    d = tmp_path / flag.strip("-")
    r = CliRunner().invoke(app, ["world", "export", flag, str(d), "--seed", "1", "--n-pretrain", "20", "--n-sft", "10",
                                 "--n-train-prompts", "5", "--n-heldout-prompts", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads((d / "world.json").read_text())["files"]["sft.jsonl"]["rows"] == 10


@pytest.mark.parametrize("flag", ["--output", "--out"])
def test_world_label_writes_to_either_spelling(tmp_path, flag):
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"prompt": "What is 2 plus 2?", "responses": ["4.", "The answer is 4."]}) + "\n")
    out = tmp_path / f"{flag.strip('-')}.jsonl"
    r = CliRunner().invoke(app, ["world", "label", "--candidates", str(cands), flag, str(out), "--ties", "keep"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and {rows[0]["chosen"], rows[0]["rejected"]} == {"4.", "The answer is 4."}


def test_help_names_the_canonical_flags_first():
    run = CliRunner().invoke
    assert "--output-dir, --out-dir" in run(app, ["world", "export", "--help"]).output
    assert "--output, --out" in run(app, ["world", "label", "--help"]).output
