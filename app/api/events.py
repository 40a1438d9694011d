"""A run's events as Server-Sent Events: from its Redis token stream (runs submitted with
``stream=True``), else from the session store.

Relayed events carry the stream entry's id as their SSE ``id``, so a client that reconnects
with ``Last-Event-ID`` resumes after the last event it got, missing none. Events read from the
store are ``step`` and ``end`` only, with ids ``step-<index>`` and ``end``. A kind this module
does not know (a worker newer than the API) passes through as an event of its own name. A
parked run (``waiting``) has not ended: its stream stays open until it does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sse_starlette import ServerSentEvent

from app.api.models import event_data
from app.constants import stream_key
from app.memory.records import RunState, RunStatus
from app.tasks.relay import ATTEMPT, END, STEP, TOKEN, StreamEvent, decode

STORE_CHECK_MS = 5000
"""A token stream silent this long: ask the store whether the run ended (its ``end`` entry
may be missing: relay writes are best effort)."""

_STREAM_ID = re.compile(r"^(\d+)-(\d+)$")
_STEP_ID = re.compile(r"^step-(\d+)$")
END_ID = "end"

LoadRun = Callable[[], Awaitable[RunState | None]]


class BadEventIdError(ValueError):
    """Raised when a Last-Event-ID is not one this run's events carry."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a reconnecting client stopped: a stream entry id, or a stored step or the end."""

    entry: str = "0-0"
    step: int = -1
    ended: bool = False


def resume_point(last_event_id: str | None, relayed: bool) -> Resume:
    """The :class:`Resume` of a Last-Event-ID header for a run whose events are ``relayed``
    (from its token stream) or read from the store; :class:`BadEventIdError` when it fits
    neither."""
    if not last_event_id:
        return Resume()
    if last_event_id == END_ID:  # an end read from the store, whichever way the run went
        return Resume(ended=True)
    if relayed and _STREAM_ID.match(last_event_id):
        return Resume(entry=last_event_id)
    if not relayed:
        match = _STEP_ID.match(last_event_id)
        if match:
            return Resume(step=int(match.group(1)))
    expected = "a stream entry id such as 1700000000000-0" if relayed else "step-<n> or end"
    raise BadEventIdError(
        f"Last-Event-ID {last_event_id!r} is not an event of this run ({expected})"
    )


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def end_event(
    status: str, answer: Any = None, error: str | None = None, id: str = END_ID
) -> ServerSentEvent:
    """The ``end`` event of a run that finished with ``status``."""
    fields: dict[str, Any] = {"status": status}
    if status == RunStatus.SUCCEEDED:
        fields["answer"] = answer
    else:
        fields["error"] = error
    return ServerSentEvent(data=event_data(END, **fields), event=END, id=id)


def relayed_event(event: StreamEvent) -> ServerSentEvent | None:
    """The SSE of one token stream entry; a kind not known here passes through under its own
    name with ``step``, its ``text`` if any and its data's fields (None: an entry without a
    kind)."""
    if event.kind == TOKEN:
        data = event_data(TOKEN, step=event.step, text=event.text)
    elif event.kind == ATTEMPT:
        data = event_data(ATTEMPT, step=event.step)
    elif event.kind == STEP:
        info = event.data or {}
        data = event_data(
            STEP, index=event.step, kind=info.get("kind"), tools=info.get("tools", [])
        )
    elif event.kind == END:
        info = event.data or {}
        return end_event(
            info.get("status", "failed"), info.get("answer"), info.get("error"), event.id
        )
    elif _EVENT_NAME.match(event.kind):
        data = json.dumps(_passed_through(event), separators=(",", ":"), default=str)
    else:
        return None
    return ServerSentEvent(data=data, event=event.kind, id=event.id)


_EVENT_NAME = re.compile(r"^[A-Za-z][\w.-]{0,63}$")  # a name that cannot break the SSE framing


def _passed_through(event: StreamEvent) -> dict[str, Any]:
    """The data of an event of a kind not known here: ``step``, ``text``, the data's fields."""
    fields: dict[str, Any] = {"step": event.step}
    if event.text:
        fields["text"] = event.text
    if isinstance(event.data, dict):
        fields.update(event.data)
    elif event.data is not None:
        fields["data"] = event.data
    return fields


def _decoded(response: Any) -> list[StreamEvent]:
    return [decode(i, fields) for _key, entries in response or [] for i, fields in entries]


async def saw_the_end(client: Any, tenant: str, run_id: str, resume: Resume, relayed: bool) -> bool:
    """Whether a client resuming at ``resume`` has had the run's ``end`` event already."""
    if resume.ended or not relayed:
        return resume.ended
    key = stream_key(tenant, run_id)
    tail = _decoded([(key, await client.xrevrange(key, count=1))])
    return (
        bool(tail)
        and tail[0].kind == END
        and (_entry_order(tail[0].id) <= _entry_order(resume.entry))
    )


async def relayed_events(
    client: Any, tenant: str, run_id: str, resume: Resume, load_run: LoadRun
) -> AsyncIterator[ServerSentEvent]:
    """The run's token stream from after ``resume.entry`` up to and including ``end``.

    Waits for entries as long as the client listens; a stream silent for
    :data:`STORE_CHECK_MS` whose run the store shows finished gets its ``end`` from the store.
    """
    key, last = stream_key(tenant, run_id), resume.entry
    while True:
        events = _decoded(await client.xread({key: last}, count=1024, block=STORE_CHECK_MS))
        if not events:
            run = await load_run()
            if run is None or not run.status.ended:  # running, or parked: more will come
                continue
            events = _decoded(await client.xread({key: last}, count=1024))
            if not any(e.kind == END for e in events):
                for event in events:
                    sse = relayed_event(event)
                    if sse is not None:
                        yield sse
                yield end_event(run.status, run.answer, run.error)
                return
        for event in events:
            last = event.id
            sse = relayed_event(event)
            if sse is not None:
                yield sse
            if event.kind == END:
                return


async def stored_events(
    load_run: LoadRun, resume: Resume, poll_s: float
) -> AsyncIterator[ServerSentEvent]:
    """``step`` events as the run's steps are stored, then ``end``, read every ``poll_s``."""
    sent = resume.step
    while True:
        run = await load_run()
        if run is not None:
            for step in run.steps:
                if step.step > sent:
                    data = event_data(STEP, index=step.step, kind=step.kind, tools=step.tools)
                    yield ServerSentEvent(data=data, event=STEP, id=f"step-{step.step}")
                    sent = step.step
            if run.status.ended:
                yield end_event(run.status, run.answer, run.error)
                return
        await asyncio.sleep(poll_s)
