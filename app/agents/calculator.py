"""Bounded arithmetic: each operation's result size is estimated before it is computed.

The model writes the expression, so an exponent limit alone is not enough:
``(((9**64)**64)**64)**64`` keeps every exponent small and still asks for a number of
about 2**26 bits. Each operation here is refused when its result could pass
:data:`MAX_RESULT_BITS`, which also keeps every result printable as JSON (Python refuses
to turn integers of more than 4300 digits into text).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from app.errors import ToolError

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_RESULT_BITS = 4096
"""Largest integer result (about 1233 decimal digits) of any operation."""

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> Number:
    """The value of ``expression`` (+ - * / // % ** and parentheses), or :class:`ToolError`."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    try:
        return _evaluate(tree)
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc
    except OverflowError as exc:  # float overflow, or an int too large for a float
        raise ToolError(f"result out of range: {exc}") from exc
    except RecursionError as exc:
        raise ToolError("expression nested too deeply") from exc


def result_bits(op: type[ast.operator], left: Number, right: Number) -> int:
    """An upper bound on the bits of ``left op right`` for two ints (0 for a float result)."""
    if not (isinstance(left, int) and isinstance(right, int)) or op is ast.Div:
        return 0  # floats are bounded by themselves (overflow raises)
    a, b = abs(left).bit_length(), abs(right).bit_length()
    if op in (ast.Add, ast.Sub):
        return max(a, b) + 1
    if op is ast.Mult:
        return a + b
    if op is ast.Pow:
        return 0 if right < 0 else a * right  # |left| < 2**a, so |left**right| < 2**(a*right)
    if op is ast.Mod:
        return max(a, b)  # the remainder is smaller than the divisor, the sign its own
    return a  # // is no larger than its left operand


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        if isinstance(node.value, bool):
            raise ToolError("booleans are not numbers here")
        return _finite(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        op = type(node.op)
        if op is ast.Pow and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent larger than {MAX_EXPONENT}")
        if result_bits(op, left, right) > MAX_RESULT_BITS:
            raise ToolError(f"result would be larger than {MAX_RESULT_BITS} bits")
        return _finite(_BINARY[op](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolError(f"unsupported expression element: {ast.dump(node)[:60]}")


def _finite(value: Any) -> Number:
    """``value`` when it is a real, finite number (JSON has no complex, inf or nan)."""
    if isinstance(value, complex):
        raise ToolError("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result out of range")
    return value  # type: ignore[no-any-return]
