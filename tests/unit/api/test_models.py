"""The API's request body and event data: what is accepted, refused and sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

pytest.importorskip("fastapi")

from pydantic import ValidationError

from app.api.events import BadEventIdError, Resume, relayed_event, resume_point
from app.api.models import RunCreate, RunView, event_data
from app.memory.records import ErrorType, RunState, RunStatus, StepKind, StepRecord
from app.tasks.relay import StreamEvent


def test_a_run_needs_an_agent_and_an_input_and_takes_submits_fields() -> None:
    run = RunCreate.model_validate(
        {
            "agent": "research",
            "input": {"question": "why", "n": [1, 2.5]},
            "session_id": "s1",
            "budget": {"max_steps": 2},
            "stream": True,
        }
    )
    assert run.budget is not None and run.budget.max_steps == 2
    assert run.input == {"question": "why", "n": [1, 2.5]}
    with pytest.raises(ValidationError):
        RunCreate.model_validate({"agent": "research"})


@pytest.mark.parametrize(
    "body",
    [
        {"agent": "research", "input": "x", "stream": "yes"},  # no coercion of "yes" to true
        {"agent": 7, "input": "x"},
        {"agent": "research", "input": "x", "session_id": 3},
        {"agent": "research", "input": "x", "budget": {"max_steps": 0}},
        {"agent": "research", "input": "x", "budget": {"max_apples": 1}},
        {"agent": "research", "input": "x", "run_id": "mine"},  # unknown field
    ],
)
def test_fields_of_the_wrong_type_or_unknown_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RunCreate.model_validate(body)


def test_event_data_is_checked_and_an_end_says_answer_or_error() -> None:
    assert json.loads(event_data("token", step=0, text=" w2")) == {"step": 0, "text": " w2"}
    assert json.loads(event_data("end", status="succeeded", answer=None)) == {
        "status": "succeeded",
        "answer": None,
    }
    assert json.loads(event_data("end", status="failed", error="boom")) == {
        "status": "failed",
        "error": "boom",
    }
    with pytest.raises(ValidationError):
        event_data("step", index=0, kind="nap", tools=[])


def test_a_relayed_entry_keeps_its_stream_id_as_the_event_id() -> None:
    token = relayed_event(StreamEvent("token", 1, "Answer:", id="1700000000000-3"))
    assert token is not None
    assert (token.event, token.id) == ("token", "1700000000000-3")
    assert json.loads(token.data) == {"step": 1, "text": "Answer:"}
    step = relayed_event(
        StreamEvent("step", 0, data={"kind": "tool", "tool": "calc", "tools": ["calc"]}, id="1-0")
    )
    assert step is not None and json.loads(step.data) == {
        "index": 0,
        "kind": "tool",
        "tools": ["calc"],
    }
    # A kind not known here (a newer worker's) passes through under its own name.
    gossip = relayed_event(StreamEvent("gossip", 2, data={"who": "kid-a"}, id="2-0"))
    assert gossip is not None and (gossip.event, gossip.id) == ("gossip", "2-0")
    assert json.loads(gossip.data) == {"step": 2, "who": "kid-a"}
    # One without a kind, or whose name would break the SSE framing, is dropped.
    assert relayed_event(StreamEvent("", 0, id="3-0")) is None
    assert relayed_event(StreamEvent("a\nevent: end", 0, id="4-0")) is None


def test_last_event_id_resumes_where_the_client_stopped() -> None:
    assert resume_point(None, relayed=True) == Resume()
    assert resume_point("1700000000000-3", relayed=True) == Resume(entry="1700000000000-3")
    assert resume_point("step-2", relayed=False) == Resume(step=2)
    assert resume_point("end", relayed=False) == Resume(ended=True)
    assert resume_point("end", relayed=True) == Resume(ended=True)  # an end from the store
    for wrong, relayed in [("step-2", True), ("1-0", False), ("banana", True)]:
        with pytest.raises(BadEventIdError):
            resume_point(wrong, relayed)


def test_a_run_read_shows_each_steps_replica_and_a_failed_runs_traceback() -> None:
    started = datetime.now(UTC)
    step = StepRecord(step=0, kind=StepKind.ERROR, model_output="", replica="grpc://t:8001")
    run = RunState(
        "r1", None, "research", "hi", RunStatus.FAILED, 1, None, "model call failed", started,
        started, ErrorType.MODEL_ERROR, traceback="Traceback ...\nInferenceError: x\n",
        steps=[step],
    )  # fmt: skip
    view = RunView.of(run).model_dump(mode="json")
    assert view["traceback"] == "Traceback ...\nInferenceError: x\n"
    assert view["steps"][0]["replica"] == "grpc://t:8001"
