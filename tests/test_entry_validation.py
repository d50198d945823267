"""A config passed to an entry point from Python is checked as the command line checks it (config.resolve calls
`validate()`): the same ValueError with the same message, before any data or model loads."""

import importlib

import pytest
from click.testing import CliRunner

from rlhfkit.cli.main import app

# command, module, entry, an invalid config's fields, the same config as flags, words of the expected message
CASES = [
    ("sft", "rlhfkit.algorithms.sft", "train", {"model": "m"}, ["--model", "m"], "model and data are required"),
    ("pretrain", "rlhfkit.algorithms.pretrain", "train", {"data": "d"}, ["--data", "d"],
     "data and tokenizer (or init_from) are required"),
    ("rm", "rlhfkit.algorithms.rm", "train", {"model": "m", "data": "d", "ties": "bogus"},
     ["--model", "m", "--data", "d", "--ties", "bogus"], "ties: 'bogus' is not one of drop, soft"),
    ("bon", "rlhfkit.algorithms.bon", "run", {"model": "m", "prompts": "p", "n": 0},
     ["--model", "m", "--prompts", "p", "--n", "0"], "n must be >= 1 and temperature > 0"),
    ("generate", "rlhfkit.rollout.generate", "run", {"model": "m", "prompts": "p", "top_p": 0.0},
     ["--model", "m", "--prompts", "p", "--top-p", "0"], "temperature must be >= 0 and top_p in (0, 1]"),
    ("sample", "rlhfkit.rollout.sample", "run", {"model": "m", "prompts": "p", "num_responses": 1},
     ["--model", "m", "--prompts", "p", "--num-responses", "1"], "num_responses must be >= 2 to make pairs, got 1"),
]


@pytest.mark.parametrize("command, module, entry, fields, flags, message", CASES, ids=[c[0] for c in CASES])
def test_python_entry_point_raises_what_the_cli_reports(command, module, entry, fields, flags, message, tmp_path):
    mod = importlib.import_module(module)
    dest = "output_dir" if "output_dir" in mod.Config.__dataclass_fields__ else "output"
    cfg = mod.Config(**fields, **{dest: str(tmp_path / "out")})
    with pytest.raises(ValueError) as python_error:
        getattr(mod, entry)(cfg)
    assert str(python_error.value) == message
    assert not any(tmp_path.iterdir())  # refused before writing anything
    r = CliRunner().invoke(app, [command, *flags])
    assert r.exit_code == 2 and f"Error: {message}" in r.output, r.output
