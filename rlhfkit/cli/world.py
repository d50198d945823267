"""`rlhfkit world ...`: the built-in world's commands (options generated from each command's Config)."""

import click

from rlhfkit.cli.main import config_command

app = click.Group("world", help="The built-in world: export its datasets, label candidates with its annotators.")
app.add_command(config_command("export", "rlhfkit.world.export", "run", "Write the world's datasets as JSONL."))
app.add_command(config_command("label", "rlhfkit.world.label", "run",
                               "Label a candidates file with the simulated annotators (TRL preference rows)."))
