"""The built-in tools: an exact calculator and a lookup over a local table.

Both read text a model wrote, so neither ever executes it: the calculator parses it with `ast` and walks only a
whitelist of arithmetic nodes (no names, calls, attributes or subscripts, so `__import__('os')` is refused, not run),
with bounds on the input's length and on the size of every intermediate number (`9 ** 9 ** 9` is refused before it
is computed). Standard library only: the tool worker imports this module.
"""
from __future__ import annotations

import ast
import math
import operator
from fractions import Fraction

MAX_EXPRESSION_CHARS = 500
MAX_BITS = 4096  # ~1233 decimal digits for any numerator or denominator along the way
MAX_EXPONENT = 10_000
DIGITS = 20  # significant digits shown of a result with no finite decimal expansion (1/3)

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: None,  # Pow: checked before it is computed
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message is what the model reads."""


def _bounded(x: Fraction) -> Fraction:
    if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
        raise CalculatorError(f"number too large (over {MAX_BITS} bits)")
    return x


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        raise CalculatorError("exponent must be an integer (roots are not exact)")
    n = int(exp)
    if abs(n) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {n} too large (at most {MAX_EXPONENT})")
    # the result has about |n| times the bits of the base: refuse before computing, not after
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits > 1 and (bits - 1) * abs(n) > MAX_BITS:
        raise CalculatorError(f"result too large (over {MAX_BITS} bits)")
    if base == 0 and n < 0:
        raise CalculatorError("division by zero")
    return base ** n


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool and complex are not arithmetic
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise CalculatorError("number too large")
        # repr gives the shortest decimal that round-trips, i.e. the literal as written: 0.1 is 1/10 exactly
        return _bounded(Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            raise CalculatorError("division by zero")
        return _bounded(Fraction(_BINARY[type(node.op)](left, right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    what = {ast.Call: "function calls", ast.Name: "names", ast.Attribute: "attributes", ast.Subscript: "subscripts",
            ast.Constant: "constants other than numbers"}.get(type(node), type(node).__name__)
    raise CalculatorError(f"not arithmetic: {what} are not allowed (use numbers, + - * / // % ** and parentheses)")


def format_number(x: Fraction) -> str:
    """Exact decimal text when there is one (`3`, `-0.125`), else DIGITS significant digits (1/3 ->
    `0.33333333333333333333`)."""
    if x.denominator == 1:
        return str(x.numerator)
    den, twos, fives = x.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den == 1:  # a terminating decimal: scale by 10^k and place the point
        k = max(twos, fives)
        digits = str(abs(x.numerator) * 10 ** k // x.denominator).rjust(k + 1, "0")
        return ("-" if x < 0 else "") + digits[:-k] + "." + digits[-k:]
    exponent = len(str(abs(x.numerator) // x.denominator)) if abs(x) >= 1 else 0
    scale = DIGITS - exponent
    if scale <= 0:
        return str(round(x))
    rounded = round(x * 10 ** scale)
    sign, digits = ("-" if rounded < 0 else ""), str(abs(rounded)).rjust(scale + 1, "0")
    return (sign + digits[:-scale] + "." + digits[-scale:]).rstrip("0").rstrip(".")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, with integers and decimals of any size.

    Args:
        expression: The arithmetic to evaluate, using numbers, + - * / // % ** and parentheses, e.g. "(17 * 23) / 4".
    """
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression too long ({len(expression)} characters, at most {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"not an arithmetic expression: {getattr(e, 'msg', None) or type(e).__name__}") from None
    try:
        return format_number(_eval(tree))
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None


class LookupTable:
    """A read-only key -> value table; its bound `lookup` method is the tool (the table travels with it to the
    worker). Keys match after trimming and case-folding, so "Zorb" finds "zorb"."""

    def __init__(self, table: dict[str, str]):
        self.table = {self.normalize(k): str(v) for k, v in table.items()}

    @staticmethod
    def normalize(key: str) -> str:
        return " ".join(key.split()).casefold()

    def lookup(self, key: str) -> str:
        """Look up a fact in the reference table.

        Args:
            key: The name of the entry to look up, e.g. "capital of Zorbia".
        """
        if not isinstance(key, str):
            raise TypeError("key must be a string")
        found = self.table.get(self.normalize(key))
        return found if found is not None else f"no entry for {key!r}"
