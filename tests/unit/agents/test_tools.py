"""Built-in tools, calling tools by name, registering tools and bounding their results."""

import json
from collections.abc import Iterator

import fakeredis
import pytest

from app.agents.tools import TOOLS, ToolContext, bounded, run_tool, tool, tool_name, tool_spec
from app.errors import ConfigurationError, ToolArgumentsError, ToolError
from app.inference.chat import ToolSchema
from tests.fixtures.declarations import declarations_restored


@pytest.fixture(autouse=True)
def _declarations_restored() -> Iterator[None]:
    with declarations_restored():
        yield


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


def test_kv_keys_are_the_runs_tenants(ctx):
    acme = ToolContext("r2", 0, "coder", ctx.redis, tenant="acme")
    globex = ToolContext("r3", 0, "coder", ctx.redis, tenant="globex")
    assert run_tool("kv_set", {"key": "plan", "value": "secret"}, acme) == "ok"
    assert run_tool("kv_get", {"key": "plan"}, globex) is None
    assert run_tool("counter_incr", {"key": "plan"}, globex) == 1  # its own counter
    assert run_tool("kv_get", {"key": "plan"}, acme) == "secret"
    assert run_tool("kv_get", {"key": "plan"}, ctx) is None  # the default tenant's


def test_word_count(ctx):
    assert run_tool("word_count", {"text": "one two  three"}, ctx) == 3


def test_counter_counts_each_call_of_a_step_once(ctx):
    first = ToolContext("r1", 0, "coder", ctx.redis, call_id="call-1")
    second = ToolContext("r1", 0, "coder", ctx.redis, call_id="call-2")
    assert run_tool("counter_incr", {"key": "c"}, first) == 1
    assert run_tool("counter_incr", {"key": "c"}, second) == 2  # two calls in one step
    assert run_tool("counter_incr", {"key": "c"}, first) == 1  # the first, redelivered


def test_unknown_tool_and_bad_arguments_are_tool_errors(ctx):
    with pytest.raises(ToolError, match="unknown tool 'rm_rf'"):
        run_tool("rm_rf", {}, ctx)
    with pytest.raises(ToolError, match="unknown tool 'rm_rf'"):
        tool_spec("rm_rf")
    with pytest.raises(ToolArgumentsError) as bad:
        run_tool("word_count", {"words": "a b"}, ctx)
    assert str(bad.value) == (
        "invalid arguments for tool 'word_count': text: required argument missing; "
        "words: unknown argument (known: text)"
    )


def test_built_in_tools_declare_their_flags():
    flags = {
        name: (spec.cpu_heavy, spec.deterministic, spec.side_effects)
        for name, spec in TOOLS.items()
        if name in {"calculator", "kv_get", "kv_set", "counter_incr", "word_count"}
    }
    assert flags == {
        "calculator": (True, True, False),
        "kv_get": (False, False, False),
        "kv_set": (False, False, True),
        "counter_incr": (False, False, True),
        "word_count": (False, True, False),
    }
    assert TOOLS["word_count"].deadline_s is None  # the default, limits.tool_timeout_s


def test_built_in_tools_tell_the_model_what_they_take():
    assert tool_spec("kv_set").schema() == ToolSchema(
        name="kv_set",
        description='Write a value to the shared key-value store; answers "ok".',
        parameters={
            "type": "object",
            "properties": {
                "key": {"type": "string", "description": "The key to write."},
                "value": {"type": "string", "description": "The text to store under it."},
            },
            "required": ["key", "value"],
            "additionalProperties": False,
        },
    )


def test_bare_decorator_names_the_tool_after_the_function_and_needs_no_context(ctx):
    @tool
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    assert tool_name(shout) == "shout"
    assert not TOOLS["shout"].takes_context
    assert run_tool("shout", {"text": "hi"}, ctx) == "HI"


def test_declared_flags_and_version_are_kept():
    @tool("fetch_page", deadline_s=5, side_effects=True, version="2", description="Fetch a URL.")
    def fetch(ctx: ToolContext, url: str) -> str:
        """Ignored: description= wins."""
        return url

    spec = TOOLS["fetch_page"]
    assert (spec.deadline_s, spec.cpu_heavy, spec.deterministic, spec.side_effects) == (
        5,
        False,
        False,
        True,
    )
    assert (spec.version, spec.description) == ("2", "Fetch a URL.")


def test_the_function_gets_the_validated_values_and_its_context(ctx):
    seen = {}

    @tool
    def forecast(context: ToolContext, days: int, city: str = "Lyon") -> str:
        seen.update(context=context, days=days, city=city)
        return "sunny"

    assert run_tool("forecast", {"days": "3"}, ctx) == "sunny"
    assert seen == {"context": ctx, "days": 3, "city": "Lyon"}


def test_a_failing_tool_and_a_non_json_result_are_tool_errors(ctx):
    @tool
    def broken() -> None:
        raise RuntimeError("disk on fire")

    @tool
    def opaque() -> object:
        return object()

    with pytest.raises(ToolError, match="tool 'broken' failed: RuntimeError: disk on fire"):
        run_tool("broken", {}, ctx)
    with pytest.raises(ToolError, match="tool 'opaque' returned a non-JSON value"):
        run_tool("opaque", {}, ctx)


def test_another_function_under_a_taken_name_is_refused():
    def calculator(expression: str) -> str:
        return expression

    with pytest.raises(ConfigurationError, match="tool 'calculator' is registered twice"):
        tool(calculator)
    with pytest.raises(ConfigurationError, match="is not a registered tool"):
        tool_name(calculator)


def test_the_same_function_registered_again_is_not_a_conflict():
    spec = TOOLS["word_count"]
    tool("word_count", deterministic=True)(spec.fn)  # its module imported a second time
    assert TOOLS["word_count"].fn is spec.fn


@pytest.mark.parametrize(
    ("name", "deadline_s", "error"),
    [
        ("never", 0, "deadline_s must be positive"),
        ("has space", None, "must be 1-64 letters"),
        ("x" * 65, None, "must be 1-64 letters"),
    ],
)
def test_bad_declarations_are_configuration_errors(name, deadline_s, error):
    with pytest.raises(ConfigurationError, match=error):
        tool(name, deadline_s=deadline_s)(lambda: None)


def test_a_result_within_the_bound_is_kept_as_it_is():
    assert bounded({"a": [1, 2]}, 64) == {"a": [1, 2]}
    assert bounded("x" * 62, 64) == "x" * 62  # 64 bytes of JSON with its quotes


def test_an_oversized_result_is_cut_and_marked_for_the_model():
    result = bounded(["x" * 10_000], 1000)  # 10,004 bytes of JSON
    assert result["error"] == "tool result too large [truncated: 1000 of 10004 bytes]"
    assert result["truncated"] == '["' + "x" * 998 + " [truncated: 1000 of 10004 bytes]"
    assert len(json.dumps(result).encode()) < 1200
