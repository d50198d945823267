"""rlhfkit: the whole RLHF loop, with diagnostics that show whether it worked.

Each stage is a module with a `Config` dataclass and a `train(cfg)` (or `run(cfg)`) function, e.g.

    from rlhfkit import sft
    sft.train(sft.Config(model="runs/base", data="demos.jsonl", output_dir="runs/sft"))

The parts live in folders (docs/DESIGN.md has the picture): math, data, models, kernels, engine, rollout,
algorithms, diagnostics, world, cai, app, cli, tools. The commands' modules are also reachable by their short
names (`rlhfkit.sft` is `rlhfkit.algorithms.sft`). Everything is imported lazily, so `import rlhfkit` stays cheap
(the web app never imports torch).
"""

import importlib

__version__ = "0.1.0"

# short public name -> module: the Python API of every command (`from rlhfkit import dpo; dpo.train(...)`)
PUBLIC = {
    **{name: f"algorithms.{name}" for name in ("pretrain", "sft", "rm", "dpo", "ppo", "grpo", "bon")},
    "reinforce_pp": "algorithms.grpo:reinforce_pp",  # a variant of the GRPO family: its Config and train
    **{name: f"math.{name}" for name in ("losses", "advantages", "kl", "logprobs")},
    **{name: f"rollout.{name}" for name in ("generate", "sample")},
    **{name: f"diagnostics.{name}" for name in ("evaluate", "eval_rm", "monitor", "metrics", "report")},
    **{name: f"tools.{name}" for name in ("bench", "serve_rm", "merge")},
    "tokenizer": "data.tokenizer",
    "rewards": "models.rewards",
    "checkpoint": "engine.checkpoint",
}


def __getattr__(name: str):
    target, _, attr = PUBLIC.get(name, name).partition(":")  # "module:attribute" names an object in a module
    try:
        module = importlib.import_module(f"{__name__}.{target}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{target}":
            raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}") from None
        raise
    obj = getattr(module, attr) if attr else module
    globals()[name] = obj
    return obj
