"""Checks on a run's fields, shared by producers (at submit) and workers (for send_task)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

from pydantic import ValidationError

from app.agents.guardrails import Budget, first_rejection
from app.agents.registry import AgentRegistry
from app.celery_ext.envelope import compact_json, new_id
from app.config import Settings
from app.constants import DEFAULT_TENANT, TENANT_PATTERN
from app.errors import InputRejectedError, InvalidInputError, PayloadTooLargeError


@dataclass(slots=True)  # not frozen: a frozen dataclass takes five times as long to make
class RunRequest:
    """A validated run, ready to enqueue (treat it as read-only)."""

    agent: str
    input: Any
    session_id: str | None
    queue: str
    run_id: str
    stream: bool = False
    budget: dict[str, Any] | None = None  # limits tightening the agent type's budget
    input_json: str = field(default="", repr=False, compare=False)  # as validation measured it
    tenant: str = DEFAULT_TENANT  # whose run it is

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments (the wire format, JSON)."""
        kwargs = {"agent": self.agent, "input": self.input, "session_id": self.session_id}
        if self.stream:
            kwargs["stream"] = True
        if self.budget:
            kwargs["budget"] = self.budget
        if self.tenant != DEFAULT_TENANT:
            kwargs["tenant"] = self.tenant
        return kwargs

    def kwargs_json(self) -> str:
        """:meth:`kwargs` as compact JSON text, reusing the input's text from validation."""
        text = self.input_json or _json_text(self.input)
        session = "null" if self.session_id is None else encode_basestring_ascii(self.session_id)
        extra = ',"stream":true' if self.stream else ""
        if self.budget:
            extra += f',"budget":{compact_json(self.budget)}'
        if self.tenant != DEFAULT_TENANT:
            extra += f',"tenant":{encode_basestring_ascii(self.tenant)}'
        agent = encode_basestring_ascii(self.agent)
        return f'{{"agent":{agent},"input":{text},"session_id":{session}{extra}}}'


def _json_text(value: Any) -> str:
    """``value`` as compact, ASCII-only JSON text (its length is its size in bytes)."""
    return encode_basestring_ascii(value) if type(value) is str else compact_json(value)


def check_json_value(value: Any, path: str = "input") -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is a JSON value (``path`` names it)."""
    # json.dumps accepts NaN and non-str keys are coerced; both break other consumers.
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{path} holds {value!r}, which JSON cannot carry")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"{path} has a non-string key {key!r}")
            check_json_value(item, f"{path}.{key}")
        return
    raise InvalidInputError(f"{path} holds a {type(value).__name__}, which is not JSON")


def validate_run(
    registry: AgentRegistry,
    settings: Settings,
    agent: Any,
    input: Any,
    session_id: Any = None,
    run_id: str | None = None,
    stream: Any = False,
    budget: Any = None,
    *,
    tenant: Any = None,
) -> RunRequest:
    """Check one run's fields and return it as a :class:`RunRequest`, or raise a SubmitError.
    ``tenant`` None is the default tenant."""
    spec = registry.spec(agent)
    tenant = DEFAULT_TENANT if tenant is None else check_tenant(tenant)
    if input is None or (isinstance(input, str) and not input.strip()):
        raise InvalidInputError("'input' is required and must not be empty")
    check_json_value(input)
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise InvalidInputError(f"'session_id' must be a non-empty string, got {session_id!r}")
    if not isinstance(stream, bool):
        raise InvalidInputError(f"'stream' must be true or false, got {stream!r}")
    limit = spec.max_input_bytes or settings.limits.max_input_bytes
    text = _json_text(input)
    size = len(text)
    if size > limit:
        raise PayloadTooLargeError(
            f"input of agent {agent!r} is {size} bytes once JSON-encoded; the limit is {limit}"
        )
    validators = registry.input_validators(spec.name)
    rejection = first_rejection(validators, input) if validators else None
    if rejection is not None:
        raise InputRejectedError(f"input of agent {agent!r} rejected by {rejection}")
    return RunRequest(
        spec.name,
        input,
        session_id,
        spec.queue_name,
        run_id or new_id(),
        stream,
        None if budget is None else _budget(budget),
        text,
        tenant,
    )


_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(tenant: Any) -> str:
    """``tenant`` if it is a tenant id (1-64 letters, digits, ``.``, ``_`` or ``-``, starting
    with a letter or digit); else :class:`InvalidInputError`. It goes into Redis keys and metric
    labels, hence the narrow alphabet."""
    if not isinstance(tenant, str) or _TENANT.fullmatch(tenant) is None:
        raise InvalidInputError(
            f"'tenant' must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit), got {tenant!r}"
        )
    return tenant


def _budget(value: Any) -> dict[str, Any] | None:
    """A run's budget override as JSON, checked; it can only tighten the agent's budget."""
    if value is None:
        return None
    if isinstance(value, Budget):
        return value.model_dump(exclude_none=True) or None
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"'budget' must be a mapping of limits, got {value!r}")
    try:
        return Budget.model_validate(dict(value)).model_dump(exclude_none=True) or None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"invalid 'budget': {problems}") from None
