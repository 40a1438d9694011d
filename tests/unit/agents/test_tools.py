import json

import fakeredis
import pytest

from app.agents.tools import TOOLS, ToolContext, bounded, run_tool, tool
from app.errors import ToolError


@pytest.fixture
def ctx():
    return ToolContext(run_id="r1", step=0, agent="research", redis=fakeredis.FakeRedis())


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("17 * 23", 391),
        ("(1 + 2) ** 8", 6561),
        ("7 / 2", 3.5),
        ("-3 + 10 // 3", 0),
        ("2 ** 10 % 1000", 24),
    ],
)
def test_calculator(ctx, expression, value):
    assert run_tool("calculator", {"expression": expression}, ctx) == value


@pytest.mark.parametrize(
    "expression", ["__import__('os')", "a + 1", "1 / 0", "2 ** 1000", "1 +", "[1][0]"]
)
def test_calculator_refuses_what_is_not_arithmetic(ctx, expression):
    with pytest.raises(ToolError):
        run_tool("calculator", {"expression": expression}, ctx)


def test_kv_round_trip_through_redis(ctx):
    assert run_tool("kv_get", {"key": "build"}, ctx) is None
    assert run_tool("kv_set", {"key": "build", "value": "1042"}, ctx) == "ok"
    assert run_tool("kv_get", {"key": "build"}, ctx) == "1042"


def test_unknown_tool_and_bad_arguments_are_tool_errors(ctx):
    with pytest.raises(ToolError, match="unknown tool"):
        run_tool("rm_rf", {}, ctx)
    with pytest.raises(ToolError, match="bad arguments"):
        run_tool("word_count", {"words": "a b"}, ctx)


def test_word_count(ctx):
    assert run_tool("word_count", {"text": "one two  three"}, ctx) == 3


def test_a_result_within_the_bound_is_kept_as_it_is():
    assert bounded({"a": [1, 2]}, 64) == {"a": [1, 2]}
    assert bounded("x" * 62, 64) == "x" * 62  # 64 bytes of JSON with its quotes


def test_an_oversized_result_is_cut_and_marked_for_the_model():
    result = bounded(["x" * 10_000], 1000)  # 10,004 bytes of JSON
    assert result["error"] == "tool result too large [truncated: 1000 of 10004 bytes]"
    assert result["truncated"] == '["' + "x" * 998 + " [truncated: 1000 of 10004 bytes]"
    assert len(json.dumps(result).encode()) < 1200


def test_tools_declare_their_deadline_and_where_they_run():
    assert TOOLS["calculator"].cpu_heavy
    assert not TOOLS["kv_get"].cpu_heavy
    assert TOOLS["word_count"].deadline_s is None  # the default, limits.tool_timeout_s
    with pytest.raises(ValueError, match="deadline_s must be positive"):
        tool("never", deadline_s=0)
