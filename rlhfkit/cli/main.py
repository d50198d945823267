"""The `rlhfkit` command line: thin. Each command's options are generated from its `Config` dataclass.

    rlhfkit sft --config sft.yaml --learning-rate 3e-5      # defaults < YAML < command line

`--help` on any command lists every config field with its documentation and default. Commands are imported
lazily, so `rlhfkit --help` is fast and the labelling app never imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import typing

import click

# name -> (module, entry function, one-line help); "module:attribute" names an object holding Config and the entry
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("rlhfkit.demo", "run", "Run the whole pipeline on the built-in world and write a report."),
    "loop": ("rlhfkit.loop", "run", "Iterative RLHF in rounds: sample, label, retrain the reward model, PPO or DPO."),
    "tokenizer": ("rlhfkit.data.tokenizer", "train", "Train a byte-level BPE tokenizer with a chat template."),
    "pretrain": ("rlhfkit.algorithms.pretrain", "train", "Pretrain a causal LM from scratch with sequence packing."),
    "sft": ("rlhfkit.algorithms.sft", "train", "Supervised fine-tuning on demonstrations (loss on completions only)."),
    "generate": ("rlhfkit.rollout.generate", "run", "Sample completions for a prompt file (KV cache, batched)."),
    "sample": ("rlhfkit.rollout.sample", "run", "Draw K responses per prompt into a candidates file for labelling."),
    "rm": ("rlhfkit.algorithms.rm", "train", "Train a Bradley-Terry reward model (or an ensemble)."),
    "eval-rm": ("rlhfkit.diagnostics.eval_rm", "run", "Evaluate a reward model: accuracy, calibration, verbosity probe."),
    "serve-rm": ("rlhfkit.tools.serve_rm", "run", "Serve a reward model over HTTP (127.0.0.1 by default)."),
    "dpo": ("rlhfkit.algorithms.dpo", "train", "Direct preference optimisation and its family (IPO, SimPO, ORPO, KTO, ...)."),
    "ppo": ("rlhfkit.algorithms.ppo", "train", "PPO with a KL-penalised reward, value model and GAE."),
    "grpo": ("rlhfkit.algorithms.grpo", "train", "GRPO: group-normalised advantages, KL as a loss term."),
    "rloo": ("rlhfkit.algorithms.grpo", "train_rloo", "RLOO: leave-one-out baselines."),
    "reinforce-pp": ("rlhfkit.algorithms.grpo:reinforce_pp", "train",
                     "REINFORCE++: token-level KL reward, returns normalised over the batch."),
    "merge": ("rlhfkit.tools.merge", "run", "Merge a saved LoRA adapter into its base model (plain transformers weights)."),
    "bon": ("rlhfkit.algorithms.bon", "run", "Best-of-n sampling with a reward model (optional rejection-sampling SFT)."),
    "eval": ("rlhfkit.diagnostics.evaluate", "run", "Evaluate policies: judge reward, win rate, KL, length, diversity."),
    "report": ("rlhfkit.diagnostics.report", "run", "Write a self-contained HTML report of one or more runs."),
}
# name -> (module, attribute holding a click command or typer app, help)
GROUPS: dict[str, tuple[str, str, str]] = {
    "world": ("rlhfkit.cli.world", "app", "The built-in world: export its datasets, label candidates."),
    "label": ("rlhfkit.cli.label", "app", "The labelling web app for human preferences."),
    "bench": ("rlhfkit.tools.bench", "command", "Benchmark a trainer on a workload (one JSON line)."),
    "cai": ("rlhfkit.cli.cai", "app", "AI feedback: constitutional revisions, RLAIF labels, judge agreement."),
}


def _option_for(f: dataclasses.Field, hint, doc: str, canonical: str = "") -> click.Option:
    """The option of one config field; `canonical` (from the Config's FLAGS) is its spelling in --help, the
    field's own flag then an alias that still parses."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
    )
    shown = "" if default in ("", None, [], {}) else f" [default: {default}]"
    inner = hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        inner = args[0]
    if inner is bool:
        return click.Option([f"{flag}/--no-{f.name.replace('_', '-')}", f.name], default=None, help=doc + shown)
    kind = typing.get_origin(inner)
    extra = " (comma-separated)" if kind in (list, tuple) else " (key=value,...)" if kind is dict else ""
    flags = [canonical, flag] if canonical and canonical != flag else [flag]
    return click.Option([*flags, f.name], default=None, help=doc + extra + shown, metavar="VALUE")


def config_command(name: str, module_name: str, entry: str, help_text: str) -> click.Command:
    """A click command whose options are the fields of `module.Config`."""
    from rlhfkit import config as config_lib

    module_path, _, attr = module_name.partition(":")
    module = importlib.import_module(module_path)
    module = getattr(module, attr) if attr else module
    cls = module.Config
    hints = typing.get_type_hints(cls)
    docs = config_lib.field_docs(cls)
    params: list[click.Parameter] = [
        click.Option(["--config", "config_file"], default=None, metavar="YAML",
                     help="YAML file of config values (command-line options override it).")
    ]
    # One name per concept across commands: a destination directory is --output-dir, a destination file --output.
    # A Config whose field is named otherwise (kept for its Python API) maps it in FLAGS = {field: "--flag"}.
    canonical = getattr(cls, "FLAGS", {})
    params += [_option_for(f, hints[f.name], docs.get(f.name, ""), canonical.get(f.name, ""))
               for f in dataclasses.fields(cls)]
    # retired names still parse (config.renamed maps them and warns); hidden from --help
    params += [click.Option(["--" + old.replace("_", "-"), old], default=None, hidden=True)
               for old in getattr(cls, "DEPRECATED", {})]
    # A command may take one list field as positional arguments too (`rlhfkit report RUN_DIR...`).
    positional = getattr(module, "POSITIONAL", None)
    if positional:
        params.append(click.Argument(["positional_args"], nargs=-1))

    def callback(config_file=None, positional_args=(), **kwargs):
        overrides = {k: v for k, v in kwargs.items() if v is not None}
        if positional_args:
            overrides[positional] = list(positional_args)
        try:
            cfg = config_lib.resolve(cls, config_file, overrides)
        except (config_lib.ConfigError, ValueError, TypeError) as e:
            raise click.UsageError(str(e)) from None
        return getattr(module, entry)(cfg)

    # "\b" keeps click from re-flowing each paragraph of the module docstring (lists, code examples).
    doc = "\n\n".join("\b\n" + para for para in (module.__doc__ or help_text).strip().split("\n\n"))
    return click.Command(name, params=params, callback=callback, help=doc,
                         short_help=help_text, context_settings={"max_content_width": 120})


def _typer_passthrough(name: str, typer_app) -> click.Command:
    """Mount a typer app as a sub-command. typer vendors its own click, so its commands can't join a click group
    directly: hand the remaining arguments to the app, which parses, prints help and exits by itself."""

    @click.command(name, add_help_option=False, help=typer_app.info.help,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def passthrough(args):
        typer_app(args=list(args), prog_name=f"rlhfkit {name}")

    return passthrough


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or its --help is asked for)."""

    def list_commands(self, ctx):
        return list(COMMANDS) + list(GROUPS)

    def get_command(self, ctx, name):
        if name in COMMANDS:
            module, entry, help_text = COMMANDS[name]
            return config_command(name, module, entry, help_text)
        if name in GROUPS:
            module, attr, _ = GROUPS[name]
            obj = getattr(importlib.import_module(module), attr)
            if not isinstance(obj, click.Command):
                obj = _typer_passthrough(name, obj)
            obj.name = name
            return obj
        return None

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][2]) for n in COMMANDS] + [(n, GROUPS[n][2]) for n in GROUPS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(package_name="rlhfkit")
def app():
    """rlhfkit: the whole RLHF loop (SFT, preferences, reward models, PPO / DPO / GRPO, best-of-n) and the
    diagnostics that show whether it worked. Start with `rlhfkit demo`."""


def main(argv: list[str] | None = None) -> None:
    try:
        run_cli(argv)
    except SystemExit as e:
        if _in_process_group():
            if isinstance(e.code, str):
                click.echo(e.code, err=True)
            _exit_worker(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
        raise
    except BaseException:
        if _in_process_group():
            import traceback

            traceback.print_exc()
            _exit_worker(1)
        raise
    if _in_process_group():
        _exit_worker(0)


def _in_process_group() -> bool:
    """A torchrun worker that joined its group (checked without importing torch: --help stays fast)."""
    d = sys.modules.get("torch.distributed")
    return d is not None and d.is_available() and d.is_initialized()


def _exit_worker(code: int) -> None:
    from rlhfkit.engine.distributed import exit_worker

    exit_worker(code)


def run_cli(argv: list[str] | None) -> None:
    """The command line: known errors become a one-line message and exit 2 (bad input) or 1, others raise."""
    from rlhfkit.config import ConfigError
    from rlhfkit.data import DataError

    try:
        app.main(args=argv, prog_name="rlhfkit", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (DataError, ConfigError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # errors we raise on purpose carry their own clear message: no traceback for those
        from rlhfkit.engine.checkpoint import CheckpointError
        from rlhfkit.engine import NonFiniteError
        from rlhfkit.models import ModelError
        from rlhfkit.cai.judges import JudgeError

        if isinstance(e, CheckpointError):  # bad input, like bad data
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        if isinstance(e, (ModelError, NonFiniteError, JudgeError)):
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
