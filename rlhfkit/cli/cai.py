"""`rlhfkit cai ...`: the AI-feedback commands, each with options generated from its module's Config."""

from __future__ import annotations

import click

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "label": ("rlhfkit.cai.label", "run", "Label pairs with an AI judge into preference rows (RLAIF)."),
    "revise": ("rlhfkit.cai.revise", "run", "Critique and revise responses against a constitution (SL-CAI)."),
    "agreement": ("rlhfkit.cai.agreement", "run",
                  "A judge's labels against human and gold labels: accuracy, kappa, length and position bias."),
}


class _Lazy(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        from rlhfkit.cli.main import config_command

        return config_command(name, *SUBCOMMANDS[name])

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, _, h) in SUBCOMMANDS.items()])


app = _Lazy("cai", help="AI feedback: Constitutional AI revisions, RLAIF labels, judge agreement "
                        "(see docs/ai-feedback.md).")
