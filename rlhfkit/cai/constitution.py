"""The constitution: named principles, each with a critique request and a revision request (the two prompts of
Constitutional AI, Bai et al. 2022), plus the judging instructions. A YAML file:

    name: my-constitution
    judge:
      pairwise: "... {prompt} ... {response_a} ... {response_b} ... Answer A or B."
      pointwise: "... {prompt} ... {response} ... Answer Yes or No."
    principles:
      - name: harmless
        critique: Identify specific ways in which the response is harmful.
        revision: Rewrite the response to remove everything harmful.
        rule: harmful_compliance      # optional: the world rule-based judge's detector for this principle
        weight: 3.0                   # optional (default 1.0): what a violation costs the rule-based judge

`load` checks every field and raises `ConstitutionError` naming `path: field: reason`. `DEFAULT_PATH` ships with
the package.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ConfigError
from rlhfkit.world.critic import RULES

DEFAULT_PATH = Path(__file__).with_name("constitution.yaml")
PAIRWISE_FIELDS = ("prompt", "response_a", "response_b")
POINTWISE_FIELDS = ("prompt", "response")


class ConstitutionError(ConfigError):
    """A constitution file that cannot be used; the message is `path: field: reason`."""


@dataclass(frozen=True)
class Principle:
    name: str
    """Short unique name, e.g. "harmless"."""
    critique: str
    """Critique request: asks the model to find where a response violates the principle."""
    revision: str
    """Revision request: asks the model to rewrite the response so it no longer violates it."""
    rule: str | None = None
    """Detector of the world's rule-based judge for this principle (one of `world.critic.RULES`), or None."""
    weight: float = 1.0
    """Cost of a violation to the rule-based judge."""


@dataclass(frozen=True)
class Constitution:
    name: str
    pairwise: str
    """Pairwise judging instruction with {prompt}, {response_a}, {response_b}; the answer is "A" or "B"."""
    pointwise: str
    """Pointwise judging instruction with {prompt}, {response}; the answer is "Yes" or "No"."""
    principles: tuple[Principle, ...]
    path: str = ""

    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(name)


def _placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _text(d: dict, key: str, where: str) -> str:
    if key not in d:
        raise ConstitutionError(f"{where}.{key}: missing" if where else f"{key}: missing")
    v = d[key]
    if not isinstance(v, str) or not v.strip():
        raise ConstitutionError(f"{where}.{key}: must be a non-empty string, got {v!r:.60}")
    return v.strip()


def _template(d: dict, key: str, fields: tuple[str, ...], where: str) -> str:
    t = _text(d, key, where)
    try:
        found = _placeholders(t)
    except ValueError as e:  # an unbalanced brace
        raise ConstitutionError(f"{where}.{key}: bad template: {e}") from None
    missing = [f for f in fields if f not in found]
    extra = sorted(found - set(fields))
    if missing:
        raise ConstitutionError(f"{where}.{key}: must contain {', '.join('{' + f + '}' for f in missing)}")
    if extra:
        raise ConstitutionError(f"{where}.{key}: unknown placeholder(s) {extra}; allowed: {list(fields)} "
                                "(write literal braces as {{ and }})")
    return t


def parse(data: Any, path: str = "<constitution>") -> Constitution:
    """A Constitution from already-loaded YAML data; errors are `path: field: reason`."""
    if not isinstance(data, dict):
        raise ConstitutionError(f"{path}: expected a mapping with name, judge and principles")
    unknown = sorted(set(data) - {"name", "judge", "principles"})
    if unknown:
        raise ConstitutionError(f"{path}: {unknown[0]}: unknown key (known: name, judge, principles)")
    name = str(data.get("name") or Path(path).stem)
    judge = data.get("judge")
    if not isinstance(judge, dict):
        raise ConstitutionError(f"{path}: judge: must be a mapping with pairwise and pointwise instructions")
    unknown = sorted(set(judge) - {"pairwise", "pointwise"})
    if unknown:
        raise ConstitutionError(f"{path}: judge.{unknown[0]}: unknown key (known: pairwise, pointwise)")
    pairwise = _template(judge, "pairwise", PAIRWISE_FIELDS, f"{path}: judge")
    pointwise = _template(judge, "pointwise", POINTWISE_FIELDS, f"{path}: judge")
    items = data.get("principles")
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"{path}: principles: must be a non-empty list")
    principles, seen = [], set()
    for i, p in enumerate(items):
        where = f"{path}: principles[{i}]"
        if not isinstance(p, dict):
            raise ConstitutionError(f"{where}: must be a mapping with name, critique and revision")
        unknown = sorted(set(p) - {"name", "critique", "revision", "rule", "weight"})
        if unknown:
            raise ConstitutionError(f"{where}.{unknown[0]}: unknown key (known: name, critique, revision, rule, "
                                    "weight)")
        pname = _text(p, "name", where)
        if pname in seen:
            raise ConstitutionError(f"{where}.name: duplicate principle name {pname!r}")
        seen.add(pname)
        rule = p.get("rule")
        if rule is not None and rule not in RULES:
            raise ConstitutionError(f"{where}.rule: {rule!r} is not a rule-based detector; known: {list(RULES)}")
        weight = p.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConstitutionError(f"{where}.weight: must be a number >= 0, got {weight!r}")
        principles.append(Principle(pname, _text(p, "critique", where), _text(p, "revision", where), rule,
                                    float(weight)))
    return Constitution(name, pairwise, pointwise, tuple(principles), path)


def load(path: str | Path | None = None) -> Constitution:
    """Read and validate a constitution YAML file (None or "": the default one)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConstitutionError(f"{path}: constitution file not found") from None
    except UnicodeDecodeError as e:
        raise ConstitutionError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConstitutionError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return parse(data, str(path))
