"""Every `rlhfkit ...` command line shown in the README parses: the command exists and every flag is a real option
(README commands that broke when flags were renamed are a classic complaint)."""

import re
import shlex
from pathlib import Path

import click

from rlhfkit.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[list[str]]:
    text = README.read_text().replace("\\\n", " ")
    lines = [m.group(1) for m in re.finditer(r"^\s+(rlhfkit [^\n]+)$", text, re.M)]
    return [shlex.split(line)[1:] for line in lines]


def test_readme_commands_parse():
    lines = _command_lines()
    assert len(lines) >= 8
    for args in lines:
        ctx = click.Context(app)
        name, cmd, rest = app.resolve_command(ctx, args)
        if isinstance(cmd, click.Group):  # e.g. `rlhfkit world export`
            name, cmd, rest = cmd.resolve_command(ctx, rest)
        if not isinstance(cmd.params[0], click.Option) or cmd.name in ("label",):
            continue  # typer pass-through apps parse their own arguments
        cmd.make_context(name, list(rest))  # raises on an unknown option or a missing value
