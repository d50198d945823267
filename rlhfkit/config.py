"""Typed configuration: dataclass defaults < YAML file < CLI overrides.

Every command has a `Config` dataclass. A field's documentation is the string literal written right under it
(an "attribute docstring", as in cleanrl), read here with `ast` so the CLI's `--help` and the docs show it.
Unknown keys are errors that name the key and the closest valid one; values are checked against the field's
type and never silently rewritten.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import inspect
import textwrap
import types
import typing
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, with a message that names the source and the field."""


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases: {field name: doc}."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to type `tp`, or raise ConfigError naming `where`."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {getattr(tp, '__name__', tp)})")
    origin = typing.get_origin(inner)
    if inner is Any:
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(inner) or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if isinstance(value, str):
            # "a=b,c=d" on the command line
            pairs = [p for p in value.split(",") if p.strip()]
            try:
                value = dict(p.split("=", 1) for p in pairs)
            except ValueError:
                raise ConfigError(f"{where}: expected key=value[,key=value...], got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(inner) or (str, Any)
        return {str(k): coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        try:
            return inner(value)
        except ValueError:
            valid = [m.value for m in inner]
            raise ConfigError(f"{where}: {value!r} is not one of {valid}") from None
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            if isinstance(value, float):  # 2.5 is not an integer: refuse rather than truncate
                raise ValueError
            return int(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    if inner is Path:
        return Path(value)
    return value


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def renamed(cls: type, data: dict, source: str) -> dict:
    """`data` with a Config's retired keys (its class attribute `DEPRECATED = {old: new}`) under their new names,
    each with a warning that says so, so configs and command lines written for an older release still run."""
    old_to_new = getattr(cls, "DEPRECATED", {})
    out = {}
    for key, value in data.items():
        if key in old_to_new:
            new = old_to_new[key]
            if new in data:
                raise ConfigError(f"{source}: '{key}' is the old name of '{new}'; give only '{new}'")
            warnings.warn(f"{source}: '{key}' is deprecated, use '{new}'", FutureWarning, stacklevel=3)
            key = new
        out[key] = value
    return out

class DeprecatedNames(type):
    """Metaclass of `DeprecatedFields`: a retired field name (the class's `DEPRECATED = {old: new}`) given to the
    constructor in Python is renamed with the same FutureWarning that YAML and the command line give
    (`renamed`), so `grpo.Config(beta=0.04)` keeps working."""

    def __call__(cls, *args, **kwargs):
        source = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"  # grpo.Config, grpo.ReinforcePPConfig
        return super().__call__(*args, **renamed(cls, kwargs, source))


class DeprecatedFields(metaclass=DeprecatedNames):
    """Base of a Config whose `DEPRECATED = {old: new}` names also work from Python, with a warning."""

    def __getattr__(self, name: str):
        """A retired field name read from Python (`cfg.beta`) answers with its new field, with a warning."""
        new = getattr(type(self), "DEPRECATED", {}).get(name)
        if new is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warnings.warn(f"{type(self).__name__}.{name} is deprecated, use {new}", FutureWarning, stacklevel=2)
        return getattr(self, new)



def check_keys(cls: type, data: dict, source: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key '{key}'{_closest(key, valid)}")


def from_dict(cls: type, data: dict, source: str = "config") -> Any:
    """Build `cls` from a mapping, checking every key and value."""
    data = renamed(cls, data, source)
    check_keys(cls, data, source)
    hints = _type_hints(cls)
    kwargs = {k: coerce(v, hints[k], f"{source}: {k}") for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def resolve(cls: type, yaml_path: str | Path | None = None, overrides: dict | None = None) -> Any:
    """defaults < YAML < overrides (overrides may be strings from the command line)."""
    hints = _type_hints(cls)
    data: dict = {}
    if yaml_path:
        raw = renamed(cls, load_yaml(yaml_path), str(yaml_path))
        check_keys(cls, raw, str(yaml_path))
        data.update({k: coerce(v, hints[k], f"{yaml_path}: {k}") for k, v in raw.items()})
    if overrides:
        overrides = renamed(cls, overrides, "command line")
        check_keys(cls, overrides, "command line")
        data.update({k: coerce(v, hints[k], f"--{k.replace('_', '-')}") for k, v in overrides.items()})
    cfg = cls(**data)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain, YAML-safe representation of a config (enums as values, paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to the run's outputs, so a run can be reproduced from its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
