"""Typed configs: defaults < YAML < CLI, unknown keys named with the closest valid one, values type-checked."""

from dataclasses import dataclass, field

import pytest
import yaml

from rlhfkit import config as C


@dataclass
class Cfg:
    learning_rate: float = 1e-4
    """Peak learning rate."""
    steps: int = 10
    """Optimizer steps."""
    name: str = "x"
    """A name."""
    flag: bool = False
    """A switch."""
    losses: list[str] = field(default_factory=lambda: ["sigmoid"])
    """Loss list."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Renames."""


def test_precedence_defaults_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 0.5\nsteps: 3\n")
    cfg = C.resolve(Cfg, y, {"steps": "7", "losses": "sigmoid,sft", "column_map": "q=prompt,a=completion"})
    assert cfg.learning_rate == 0.5  # from YAML
    assert cfg.steps == 7  # CLI beats YAML
    assert cfg.name == "x"  # default
    assert cfg.losses == ["sigmoid", "sft"]
    assert cfg.column_map == {"q": "prompt", "a": "completion"}


def test_unknown_key_names_closest(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rat: 0.1\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml: unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        C.resolve(Cfg, y)
    with pytest.raises(C.ConfigError, match="command line: unknown key 'stepz'.*'steps'"):
        C.resolve(Cfg, None, {"stepz": 1})


def test_bad_values_are_errors_not_rewrites(tmp_path):
    with pytest.raises(C.ConfigError, match="--steps: expected an integer, got 2.5"):
        C.resolve(Cfg, None, {"steps": 2.5})
    with pytest.raises(C.ConfigError, match="--flag: expected true/false"):
        C.resolve(Cfg, None, {"flag": "maybe"})
    y = tmp_path / "c.yaml"
    y.write_text("steps: [1, 2\n")
    with pytest.raises(C.ConfigError, match="c.yaml:2: invalid YAML"):
        C.resolve(Cfg, y)


def test_saved_config_round_trips(tmp_path):
    cfg = C.resolve(Cfg, None, {"name": "run", "flag": True})
    C.save(cfg, tmp_path / "config.yaml")
    again = C.resolve(Cfg, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["flag"] is True


def test_field_docs_are_attribute_docstrings():
    docs = C.field_docs(Cfg)
    assert docs["learning_rate"] == "Peak learning rate."
    assert set(docs) == {"learning_rate", "steps", "name", "flag", "losses", "column_map"}


def test_every_command_config_documents_every_field():
    """Each command's --help lists every field with its doc: no field may lack an attribute docstring."""
    import dataclasses
    import importlib

    from rlhfkit.cli.main import COMMANDS

    checked = 0
    for name, (module, _, _) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue  # a stage not built yet
        docs = C.field_docs(mod.Config)
        missing = [f.name for f in dataclasses.fields(mod.Config) if not docs.get(f.name)]
        assert not missing, f"{name}: fields without a docstring: {missing}"
        checked += 1
    assert checked >= 4


def test_cli_help_lists_fields():
    from click.testing import CliRunner

    from rlhfkit.cli.main import app

    res = CliRunner().invoke(app, ["sft", "--help"])
    assert res.exit_code == 0, res.output
    assert "--learning-rate" in res.output and "Peak AdamW learning rate" in res.output
    assert "--micro-batch-size" in res.output and "--config" in res.output
    res = CliRunner().invoke(app, ["sft", "--model", "m", "--data", "d", "--learning-rat", "1"])
    assert res.exit_code != 0


def test_deprecated_names_map_to_their_new_fields_with_a_warning(tmp_path):
    """A retired key (a Config's DEPRECATED map: grpo's clip_range is now epsilon_low) still works from YAML and the
    command line, says it is deprecated, and may not be given together with its new name."""
    import warnings

    from rlhfkit import config as config_lib
    from rlhfkit.algorithms import grpo

    base = {"model": "m", "data": "d"}
    (tmp_path / "c.yaml").write_text("clip_range: 0.3\n")
    with pytest.warns(FutureWarning, match="'clip_range' is deprecated, use 'epsilon_low'"):
        assert config_lib.resolve(grpo.Config, tmp_path / "c.yaml", base).epsilon_low == 0.3
    with pytest.warns(FutureWarning):
        assert config_lib.resolve(grpo.Config, None, {**base, "clip_range": "0.25"}).epsilon_low == 0.25
    with pytest.raises(config_lib.ConfigError, match="old name of 'epsilon_low'"):
        config_lib.resolve(grpo.Config, None, {**base, "clip_range": "0.25", "epsilon_low": "0.2"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_lib.resolve(grpo.Config, None, {**base, "epsilon_low": "0.1"}).epsilon_low == 0.1
    assert "clip_range" not in {f.name for f in __import__("dataclasses").fields(grpo.Config)}
