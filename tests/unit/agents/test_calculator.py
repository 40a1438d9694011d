"""The calculator bounds what each operation may produce, not only the exponent."""

from __future__ import annotations

import ast
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.agents.calculator import MAX_RESULT_BITS, evaluate, result_bits
from app.errors import ToolError


@pytest.mark.parametrize(
    "expression",
    [
        "(((9**64)**64)**64)**64",  # each exponent within its limit, the result is not
        "((((9**64)**64)**64)**64)**64",
        "(9**64)**64",
        "(2**64)**64 * (2**64)**64",
        "(10**60)**20 * (10**60)**20",
        "1" + "0" * 150 + " ** 64",
    ],
)
def test_results_past_the_bound_are_refused_before_they_are_computed(expression):
    with pytest.raises(ToolError, match=f"larger than {MAX_RESULT_BITS} bits"):
        evaluate(expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1e308 * 10", "out of range"),
        ("2.0 ** 64 ** 2", "exponent larger than 64"),
        ("1e300 ** 64", "out of range"),
        ("(-8) ** 0.5", "not a real number"),
        ("1e999", "out of range"),
        ("(2**64)**62 / 1e-300", "out of range"),
        ("-" * 199 + "1", None),
    ],
)
def test_floats_stay_finite_and_real(expression, message):
    if message is None:
        assert evaluate(expression) == -1
        return
    with pytest.raises(ToolError, match=message):
        evaluate(expression)


def test_largest_allowed_results_are_json_numbers():
    value = evaluate("(2**64)**62 * 2**63")
    assert value.bit_length() <= MAX_RESULT_BITS
    assert json.loads(json.dumps(value)) == value


_OPS = [ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod]


@settings(max_examples=300, derandomize=True)
@given(
    st.sampled_from(_OPS),
    st.integers(-(2**300), 2**300),
    st.integers(-(2**300), 2**300).filter(bool),
)
def test_the_estimate_is_an_upper_bound(op, left, right):
    actual = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}.get(op)
    if actual is None:
        actual = left // right if op is ast.FloorDiv else left % right
    assert abs(actual).bit_length() <= result_bits(op, left, right)


@settings(max_examples=200, derandomize=True)
@given(st.integers(-(2**40), 2**40), st.integers(0, 64))
def test_the_power_estimate_is_an_upper_bound(base, exponent):
    assert abs(base**exponent).bit_length() <= max(1, result_bits(ast.Pow, base, exponent))
