"""A tool's signature and docstring become the JSON Schema the model is told; the model's
arguments are validated against it, and the errors are worded for the model to correct."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from app.agents.signatures import parse_docstring
from app.agents.tools import TOOLS, ToolContext, ToolSpec, run_tool, tool
from app.errors import ConfigurationError, ToolArgumentsError
from tests.fixtures.declarations import declarations_restored

CTX = ToolContext(run_id="r1", step=0, agent="weather", redis=None)


class Units(enum.Enum):
    METRIC = "metric"
    IMPERIAL = "imperial"


class Place(BaseModel):
    city: str
    country: str = "FR"


@pytest.fixture(autouse=True)
def _declarations_restored() -> Iterator[None]:
    with declarations_restored():
        yield


def declared(fn: Any) -> ToolSpec:
    tool(fn)
    return TOOLS[fn.__name__]


def test_types_defaults_optional_lists_and_choices_make_the_schema():
    def forecast(
        ctx: ToolContext,
        city: str,
        days: int = 3,
        hourly: bool = False,
        threshold: float | None = None,
        tags: list[str] | None = None,
        mode: Literal["rain", "wind"] = "rain",
        units: Units = Units.METRIC,
    ) -> dict[str, Any]:
        """The weather forecast for a city.

        Longer notes that the model is not told.

        Args:
            city: City name,
                e.g. "Lyon".
            days: How many days ahead.
            units (Units): Unit system.

        Returns:
            The forecast by day.
        """
        return {}

    spec = declared(forecast)
    assert spec.takes_context
    assert spec.description == "The weather forecast for a city."
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'City name, e.g. "Lyon".'},
            "days": {"type": "integer", "default": 3, "description": "How many days ahead."},
            "hourly": {"type": "boolean", "default": False},
            "threshold": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
            },
            "mode": {"type": "string", "enum": ["rain", "wind"], "default": "rain"},
            "units": {"$ref": "#/$defs/Units", "default": "metric", "description": "Unit system."},
        },
        "required": ["city"],
        "additionalProperties": False,
        "$defs": {"Units": {"type": "string", "enum": ["metric", "imperial"]}},
    }
    assert spec.schema().parameters is spec.parameters


def test_annotated_field_descriptions_win_over_the_docstring():
    def search(
        query: Annotated[str, Field(description="What to look for.", min_length=1)],
        limit: Annotated[int, Field(ge=1, le=50)] = 10,
    ) -> list[str]:
        """Search the catalogue.

        Args:
            query: Not this one.
            limit: Most results.
        """
        return []

    properties = declared(search).parameters["properties"]
    assert properties["query"] == {
        "type": "string",
        "minLength": 1,
        "description": "What to look for.",
    }
    assert properties["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 50,
        "default": 10,
        "description": "Most results.",
    }


def test_a_function_without_annotations_takes_any_json():
    def echo(ctx, value, note="none"):
        return [value, note]

    spec = declared(echo)
    assert spec.takes_context  # named ctx
    assert spec.description == ""
    assert spec.parameters == {
        "type": "object",
        "properties": {"value": {}, "note": {"default": "none"}},
        "required": ["value"],
        "additionalProperties": False,
    }
    assert run_tool("echo", {"value": {"any": [1, "json"]}}, CTX) == [{"any": [1, "json"]}, "none"]


def test_a_nested_model_argument_is_validated_and_passed_as_the_model():
    def locate(place: Place) -> str:
        """Where a place is."""
        return f"{place.city}, {place.country}"

    spec = declared(locate)
    assert spec.parameters["properties"]["place"] == {"$ref": "#/$defs/Place"}
    assert run_tool("locate", {"place": {"city": "Lyon"}}, CTX) == "Lyon, FR"


def test_a_property_named_title_is_kept():
    def publish(title: str) -> str:
        return title

    assert declared(publish).parameters["properties"] == {"title": {"type": "string"}}


def test_values_are_coerced_where_pydantic_can_and_passed_coerced():
    def add_days(days: int, factor: float = 1.0) -> list[Any]:
        return [days, type(days).__name__, factor]

    spec = declared(add_days)
    assert spec.validate({"days": "4"}) == {"days": 4, "factor": 1.0}
    assert run_tool("add_days", {"days": "4", "factor": 2}, CTX) == [4, "int", 2.0]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"city": "Lyon", "days": "soon"}, "days: Input should be a valid integer, unable to "
         "parse string as an integer (got 'soon')"),
        ({}, "city: required argument missing"),
        ({"city": "Lyon", "when": "now"}, "when: unknown argument (known: city, days, mode)"),
        ({"city": "Lyon", "mode": "snow"}, "mode: Input should be 'rain' or 'wind' (got 'snow')"),
        ({"city": ["Lyon"] * 40}, "city: Input should be a valid string (got ['Lyon', 'Lyon', "
         "'Lyon', 'Lyon', 'Lyon', 'Lyon', 'Lyon', ...)"),
        ([1, 2], "expected a JSON object (got [1, 2])"),
    ],
)  # fmt: skip
def test_invalid_arguments_say_what_is_wrong_in_one_line_for_the_model(args, problem):
    def forecast(city: str, days: int = 3, mode: Literal["rain", "wind"] = "rain") -> str:
        return "sunny"

    spec = declared(forecast)
    with pytest.raises(ToolArgumentsError) as error:
        spec.validate(args)
    assert str(error.value) == f"invalid arguments for tool 'forecast': {problem}"


def test_many_errors_are_cut_to_the_first_five():
    def wide(a: int, b: int, c: int, d: int, e: int, f: int, g: int) -> int:
        return 0

    with pytest.raises(ToolArgumentsError) as error:
        declared(wide).validate({})
    assert str(error.value).endswith("e: required argument missing; and 2 more")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def spread(*names: str) -> str: ...", "must be a named one"),
        ("def spread(**names: str) -> str: ...", "must be a named one"),
        ("def spread(name: str, /) -> str: ...", "must be a named one"),
        ("def spread(name: 'Missing') -> str: ...", "do not resolve: NameError"),
        ("def spread(name: 'range') -> str: ...", "no JSON Schema for the arguments"),
        ("def spread(name: 'Callable[[], int]') -> str: ...", "no JSON Schema for the arguments"),
    ],
)
def test_signatures_without_a_schema_are_refused_at_declaration(source, error):
    namespace: dict[str, Any] = {"Callable": Callable}
    exec(source, namespace)
    with pytest.raises(ConfigurationError, match=error):
        tool(namespace["spread"])
    assert "spread" not in TOOLS


def test_docstring_sections_end_the_summary_and_arguments_are_read_by_indent():
    summary, arguments = parse_docstring(
        """Summarise a text
        in few words.

        Args:
            text (str): The text.
                Any length.
            *extra: Ignored words.

        Raises:
            ValueError: not an argument.
        """
    )
    assert summary == "Summarise a text in few words."
    assert arguments == {"text": "The text. Any length.", "extra": "Ignored words."}
    assert parse_docstring(None) == ("", {})
