"""A tool function's arguments as a pydantic model and a JSON Schema, read from its signature
and docstring, so that the model is told them and its calls are checked against them.

The first paragraph of the docstring describes the tool; a Google-style ``Args:`` section (or
``Annotated[..., Field(description=...)]``) describes each argument. A parameter without an
annotation takes any JSON value.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, create_model
from pydantic.fields import FieldInfo

from app.errors import ConfigurationError

CONTEXT_PARAMETER = "ctx"
"""A tool's first parameter of this name (or annotated with the context type) is its context."""

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Keyword Args|Returns?|Yields?|Raises|Examples?|Notes?|"
    r"Attributes|See Also|Warnings?|Todo):\s*$"
)
_ARGUMENT_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args"}
_ARGUMENT = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
# Schema keywords whose value is a schema, a list of schemas or a map of name to schema.
_SUBSCHEMA = ("items", "additionalProperties", "not", "contains")
_SUBSCHEMAS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")


@dataclass(frozen=True, slots=True)
class Signature:
    """What a tool function takes: its context or not, and its arguments as a model."""

    takes_context: bool
    arguments: type[BaseModel]
    description: str
    parameters: dict[str, Any]  # the JSON Schema of ``arguments``, as the model is told


def read_signature(
    name: str, fn: Callable[..., Any], context_type: type, description: str | None = None
) -> Signature:
    """The signature of tool ``name`` implemented by ``fn``; ``description`` replaces the
    docstring's first paragraph. :class:`ConfigurationError` when no schema can be made."""
    summary, documented = parse_docstring(fn.__doc__)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # NameError, TypeError: an annotation that does not resolve
        raise ConfigurationError(
            f"tool {name!r}: the annotations of {qualified_name(fn)} do not resolve: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    parameters = list(inspect.signature(fn).parameters.values())
    takes_context = bool(parameters) and (
        parameters[0].name == CONTEXT_PARAMETER or hints.get(parameters[0].name) is context_type
    )
    fields: dict[str, Any] = {}
    for parameter in parameters[1:] if takes_context else parameters:
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise ConfigurationError(
                f"tool {name!r}: parameter {parameter} of {qualified_name(fn)} must be a named one "
                "(no *args, **kwargs or positional-only parameters)"
            )
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        text = documented.get(parameter.name)
        if text and not _described(annotation):
            annotation = Annotated[annotation, Field(description=text)]
        fields[parameter.name] = (annotation, default)
    try:
        model = create_model(  # type: ignore[call-overload]
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid", protected_namespaces=()),
            **fields,
        )
        schema = untitled(model.model_json_schema())
    except (PydanticUserError, NameError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"tool {name!r}: no JSON Schema for the arguments of {qualified_name(fn)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return Signature(takes_context, model, description or summary, schema)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """A docstring's first paragraph (on one line) and its ``Args:`` descriptions by name."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary.append(line.strip())
    arguments: dict[str, str] = {}
    in_section, current, indent = False, "", 0
    for line in lines:
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        if depth == 0 and stripped:
            heading = _SECTION.match(stripped)
            in_section = heading is not None and heading.group(1) in _ARGUMENT_SECTIONS
            current, indent = "", 0
            continue
        if not in_section or not stripped:
            continue
        indent = indent or depth
        found = _ARGUMENT.match(stripped) if depth == indent else None
        if found:
            current = found.group(1)
            arguments[current] = found.group(2).strip()
        elif current and depth > indent:  # a continuation line
            arguments[current] = f"{arguments[current]} {stripped}".strip()
    return " ".join(summary), arguments


def untitled(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without pydantic's ``title`` keywords (a property named title is kept)."""
    out = {key: value for key, value in schema.items() if key != "title"}
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = untitled(out[key])
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), list):
            out[key] = [untitled(s) if isinstance(s, dict) else s for s in out[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {n: untitled(s) if isinstance(s, dict) else s for n, s in out[key].items()}
    return out


def _described(annotation: Any) -> bool:
    """Whether ``Annotated[..., Field(description=...)]`` already describes the argument."""
    if typing.get_origin(annotation) is not Annotated:
        return False
    return any(isinstance(m, FieldInfo) and m.description for m in annotation.__metadata__)


def qualified_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, for error messages."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
