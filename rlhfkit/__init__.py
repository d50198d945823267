"""rlhfkit: the whole RLHF loop, with diagnostics that show whether it worked.

Each stage is a module with a `Config` dataclass and a `train(cfg)` (or `run(cfg)`) function, e.g.

    from rlhfkit import sft
    sft.train(sft.Config(model="runs/base", data="demos.jsonl", output_dir="runs/sft"))

Submodules are imported lazily so that `import rlhfkit` stays cheap (the web app never imports torch).
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}") from None
        raise
