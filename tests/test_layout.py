"""The package's parts and the directions imports may run between them (docs/DESIGN.md, "Parts").

Imports are read with `ast` from every rlhfkit/**/*.py, at module level and inside functions alike: a lazy import is
still a dependency. `from rlhfkit import dpo` is resolved through rlhfkit.PUBLIC (the short public names) and
`importlib.import_module("rlhfkit...")` with a literal name counts too. Failure messages name file, line and import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "rlhfkit"

# Modules in algorithms/ that are shared machinery rather than an algorithm: every algorithm may import them
# (online.py: the online trainers' common config, rollout-to-loss plumbing and logging; lm_step.py: the SFT step
# that sft and pretrain share). They may not import an algorithm themselves.
SHARED = {"__init__", "online", "lm_step"}

MAX_LINES = 600
ALGORITHM_MAX_LINES = 400
ALGORITHM_LINE_EXCEPTIONS = {"ppo.py": 600}  # PPO carries a value head, GAE and two losses (STYLE: under ~600)
MAX_TOP_LEVEL_MODULES = 6

# Never needed by the pure math: blocked in the subprocess that imports every rlhfkit.math module
BLOCKED_FOR_MATH = ("transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "huggingface_hub",
                    "fastapi", "starlette", "uvicorn", "httpx", "sqlalchemy", "typer", "click", "yaml", "matplotlib",
                    "wandb", "sentence_transformers", "rlhfkit.kernels", "rlhfkit.models", "rlhfkit.data",
                    "rlhfkit.engine", "rlhfkit.rollout", "rlhfkit.algorithms", "rlhfkit.diagnostics", "rlhfkit.app",
                    "rlhfkit.cli", "rlhfkit.tools", "rlhfkit.world", "rlhfkit.cai", "rlhfkit.config", "rlhfkit.demo")


def _public() -> dict[str, str]:
    import rlhfkit

    return {name: f"rlhfkit.{target}" for name, target in rlhfkit.PUBLIC.items()}


PUBLIC = _public()


def _files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _resolve_from(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file. `from P import n` yields P.n when that is a module
    (or a short public name of rlhfkit), else P."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(path, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if base == "rlhfkit" and a.name in PUBLIC:
                    found.append((node.lineno, PUBLIC[a.name]))
                elif base.startswith("rlhfkit") and _is_module(sub):
                    found.append((node.lineno, sub))
                else:
                    found.append((node.lineno, base))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def _under(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def _in(path: Path, part: str) -> bool:
    return path.relative_to(PKG).parts[0] == part


def _where(path: Path, line: int, module: str) -> str:
    return f"{path.relative_to(ROOT)}:{line}: imports {module}"


def _violations(select, forbidden) -> list[str]:
    """Every import `forbidden(path, module)` flags in the files `select(path)` picks."""
    return [_where(p, line, m) for p in _files() if select(p) for line, m in imports(p) if forbidden(p, m)]


def test_import_resolution_sees_lazy_relative_and_public_names(tmp_path):
    """The parser itself: function-level imports, short public names and import_module all count, and relative
    imports resolve against the file's package."""
    path = tmp_path / "probe.py"
    path.write_text("import torch\n\ndef f():\n    from rlhfkit import dpo, models\n    import importlib\n"
                    "    importlib.import_module('rlhfkit.kernels.cpukernel')\n")
    found = [m for _, m in imports(path)]
    assert found == ["torch", "rlhfkit.algorithms.dpo", "rlhfkit.models", "importlib", "rlhfkit.kernels.cpukernel"]
    relative = ast.parse("from . import grpo").body[0]
    assert _resolve_from(PKG / "algorithms" / "ppo.py", relative) == "rlhfkit.algorithms"
    assert _resolve_from(PKG / "algorithms" / "__init__.py", relative) == "rlhfkit.algorithms"
    assert _resolve_from(PKG / "algorithms" / "ppo.py", ast.parse("from ..math import kl").body[0]) == "rlhfkit.math"


def test_math_imports_only_stdlib_torch_and_itself():
    def forbidden(path, module):
        top = module.split(".")[0]
        return not (top in sys.stdlib_module_names or top == "torch" or _under(module, "rlhfkit.math"))

    bad = _violations(lambda p: _in(p, "math"), forbidden)
    assert not bad, "rlhfkit/math may import only the standard library, torch and rlhfkit.math:\n" + "\n".join(bad)


def test_math_imports_with_everything_else_blocked():
    """Every rlhfkit.math module imports in a fresh interpreter where the web stack, transformers and every other
    part of rlhfkit raise ImportError."""
    modules = [_module(p) for p in _files() if _in(p, "math")]
    code = f"""
import importlib, importlib.abc, sys
BLOCKED = {BLOCKED_FOR_MATH!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked for rlhfkit.math: {{name}}")
        return None
sys.meta_path.insert(0, Block())
failed = []
for m in {modules!r}:
    try:
        importlib.import_module(m)
    except ImportError as e:
        failed.append(f"{{m}}: {{e}}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "rlhfkit.math modules that need something outside torch:\n" + r.stdout + r.stderr


def _algorithm(module: str) -> str | None:
    """The algorithm a module name belongs to, or None for shared modules and anything outside algorithms/."""
    if not _under(module, "rlhfkit.algorithms"):
        return None
    parts = module.split(".")
    if len(parts) < 3 or parts[2] in SHARED:
        return None
    return parts[2]


def test_algorithms_import_no_other_algorithm_nor_cli_nor_kernels():
    def forbidden(path, module):
        other = _algorithm(module)
        return ((other is not None and other != path.stem) or _under(module, "rlhfkit.cli")
                or _under(module, "rlhfkit.kernels"))

    bad = _violations(lambda p: _in(p, "algorithms"), forbidden)
    assert not bad, ("an algorithm imports another algorithm (shared code belongs in a SHARED module or below "
                     "algorithms/), the CLI or the kernels:\n" + "\n".join(bad))


def test_kernels_only_behind_models_and_rollout():
    allowed = {"models", "rollout", "kernels"}
    bad = _violations(lambda p: p.parent != PKG and p.relative_to(PKG).parts[0] not in allowed,
                      lambda p, m: _under(m, "rlhfkit.kernels"))
    bad += _violations(lambda p: p.parent == PKG, lambda p, m: _under(m, "rlhfkit.kernels"))
    assert not bad, "rlhfkit.kernels may be imported only from rlhfkit/models and rlhfkit/rollout:\n" + "\n".join(bad)


def test_rollout_imports_no_algorithm_nor_diagnostics():
    bad = _violations(lambda p: _in(p, "rollout"),
                      lambda p, m: _under(m, "rlhfkit.algorithms") or _under(m, "rlhfkit.diagnostics"))
    assert not bad, "rlhfkit/rollout may not import rlhfkit.algorithms or rlhfkit.diagnostics:\n" + "\n".join(bad)


def test_app_and_world_import_no_algorithm():
    bad = _violations(lambda p: _in(p, "app") or _in(p, "world"), lambda p, m: _under(m, "rlhfkit.algorithms"))
    bad += _violations(lambda p: _in(p, "world"), lambda p, m: _under(m, "rlhfkit.app") or _under(m, "rlhfkit.cli"))
    assert not bad, ("rlhfkit/app and rlhfkit/world may not import rlhfkit.algorithms, nor world the app or the "
                     "CLI:\n" + "\n".join(bad))


def test_app_imports_torch_only_inside_functions():
    """The web app's request path never loads torch; only the optional live reward model does, inside functions."""
    bad = []
    for path in (p for p in _files() if _in(p, "app")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [_resolve_from(path, node)] if isinstance(node, ast.ImportFrom) else [])
            bad += [_where(path, node.lineno, m) for m in names if m.split(".")[0] in ("torch", "transformers")]
    assert not bad, "module-level torch/transformers imports in rlhfkit/app:\n" + "\n".join(bad)


def test_importing_the_app_loads_no_torch():
    app = [_module(p) for p in _files() if _in(p, "app")]
    code = ("import importlib, sys\n"
            f"for m in {app!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "importing rlhfkit.app.* loaded: " + r.stdout + r.stderr


def test_few_top_level_modules():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"rlhfkit/ has {len(top)} top-level modules (at most " \
                                              f"{MAX_TOP_LEVEL_MODULES}; the rest belong in a part): {top}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_file_length(path):
    n = len(path.read_text().splitlines())
    limit = MAX_LINES
    if _in(path, "algorithms"):
        limit = ALGORITHM_LINE_EXCEPTIONS.get(path.name, ALGORITHM_MAX_LINES)
    assert n <= limit, f"{path.relative_to(ROOT)}: {n} lines (at most {limit})"
