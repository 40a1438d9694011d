"""The HTTP run API end to end: `agentq api` as a process, a real worker, the local Triton
(scripted model), a key made by `agentq api key new`. Submit over HTTP, follow the run's
events to the end, read the run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

from app.config import Settings, child_env, settings_env
from tests.fixtures.api import api_process
from tests.fixtures.sse import Event, events

pytestmark = pytest.mark.e2e

WORDS = ["w1"] + [f" w{i}" for i in range(2, 41)]


@pytest.fixture
def api_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`agentq api` on a free port, stopped by PID (SIGTERM) after the test."""
    log = tmp_path / "api.log"
    with api_process(settings, log) as url:
        yield url
    # uvicorn finishes its requests, then re-raises SIGTERM: the exit says what stopped it.
    assert "Finished server process" in log.read_text()


@pytest.fixture
def api(api_url: str, settings: Settings) -> Iterator[httpx.Client]:
    """A client of the API sending a key with scopes submit and read, made by the CLI."""
    made = subprocess.run(
        [sys.executable, "-m", "app.cli", "api", "key", "new", "--scopes", "submit,read"],
        env=child_env(settings_env(settings)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:
        yield client


def read_events(
    api: httpx.Client, path: str, last_event_id: str | None = None, limit: int | None = None
) -> list[Event]:
    """The run's events up to its end (or the first ``limit``, then disconnect)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got: list[Event] = []
    with api.stream("GET", path, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        for event in events(response.iter_lines()):
            got.append(event)
            if len(got) == limit:
                break
    return got


def test_submit_stream_tokens_to_the_end_then_read_the_run(
    api: httpx.Client, api_url: str, start_worker
) -> None:
    start_worker(["research"])
    body = {"agent": "research", "input": "[words:40] count to forty", "stream": True}
    assert httpx.post(f"{api_url}/v1/runs", json=body, timeout=30).status_code == 401  # no key
    accepted = api.post("/v1/runs", json=body)
    assert accepted.status_code == 202
    run = accepted.json()
    got = read_events(api, run["links"]["events"])
    assert got[-1].event == "end"
    answer = got[-1].data["answer"]
    assert [e.data["text"] for e in got if e.event == "token"] == WORDS
    assert "".join(e.data["text"] for e in got if e.event == "token") == answer
    assert [e.data for e in got if e.event == "step"] == [
        {"index": 0, "kind": "final", "tools": []}
    ]
    read = api.get(run["links"]["self"]).json()
    assert (read["status"], read["answer"], read["stream"]) == ("succeeded", answer, True)
    assert [s["kind"] for s in read["steps"]] == ["final"]
    assert read["steps"][0]["worker"] and read["steps"][0]["tokens_out"] > 0


def test_a_reconnect_with_last_event_id_misses_no_token(api: httpx.Client, start_worker) -> None:
    start_worker(["research"])
    body = {"agent": "research", "input": "[words:40] again", "stream": True}
    run = api.post("/v1/runs", json=body).json()
    path = run["links"]["events"]
    first = read_events(api, path, limit=6)
    rest = read_events(api, path, last_event_id=first[-1].id)
    tokens = [e.data["text"] for e in first + rest if e.event == "token"]
    assert tokens == WORDS
    assert rest[-1].event == "end" and rest[-1].data["answer"] == "".join(WORDS)


def test_a_run_without_stream_gets_its_steps_and_end(api: httpx.Client, start_worker) -> None:
    start_worker(["research"])
    body = {"agent": "research", "input": 'add [tool:calculator {"expression": "20+22"}]'}
    run = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "calc-1"}).json()
    again = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "calc-1"}).json()
    assert again["id"] == run["id"]
    got = read_events(api, run["links"]["events"])
    assert [(e.event, e.id) for e in got] == [
        ("step", "step-0"),
        ("step", "step-1"),
        ("end", "end"),
    ]
    assert got[0].data == {"index": 0, "kind": "tool", "tools": ["calculator"]}
    assert got[-1].data == {"status": "succeeded", "answer": "Answer: 42"}
    read = api.get(run["links"]["self"]).json()
    call = read["steps"][0]["tool_calls"][0]
    assert (call["name"], call["args"], call["error"]) == (
        "calculator",
        {"expression": "20+22"},
        False,
    )


def test_a_failed_run_ends_its_events_with_the_error(api: httpx.Client, start_worker) -> None:
    start_worker(["research"])
    body = {"agent": "research", "input": "[error:overloaded model]", "stream": True}
    run = api.post("/v1/runs", json=body).json()
    end = read_events(api, run["links"]["events"])[-1]
    assert end.event == "end" and end.data["status"] == "failed"
    assert "overloaded model" in end.data["error"]
    read = api.get(run["links"]["self"]).json()
    assert read["status"] == "failed" and "overloaded model" in read["error"]
    assert read["error_type"] == "model_error"
