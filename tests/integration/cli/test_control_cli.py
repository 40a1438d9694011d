"""``agentq signal``, ``agentq cancel`` and the tree of ``agentq runs show`` on real Redis and a
real store (SQLite and PostgreSQL): runs parked by a committed step, as a worker parks them;
each outcome's line and exit code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from app.celery_ext.app import create_celery
from app.cli.exits import ExitCode
from app.config import Settings
from app.constants import cancel_key
from app.errors import RunCancelledError
from app.memory.records import RunStatus
from app.memory.schema import runs
from app.memory.sessions import SessionStore
from tests.fixtures.cli import agentq, one_line
from tests.fixtures.parked import (
    finish,
    park_on_children,
    park_on_signal,
    queued_steps,
    start_running,
    store_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_settings(
    request: pytest.FixtureRequest, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> Iterator[Settings]:
    with store_settings(request, redis_url, tmp_path) as settings:
        yield settings


@pytest.fixture
def store(cli_settings: Settings) -> Iterator[SessionStore]:
    s = SessionStore.from_url(cli_settings.database_url, migrate=False)
    yield s
    s.close()


def status_of(store: SessionStore, run_id: str) -> RunStatus | None:
    run = store.load_run(run_id)
    return None if run is None else run.status


def test_a_signal_resumes_its_parked_run_once(
    cli_settings: Settings, store: SessionStore, redis_client: redis.Redis
) -> None:
    park_on_signal(store, "parked")
    sent = agentq(cli_settings, "signal", "parked", "approval", "--data", '{"ok": true}')
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "run parked: signal 'approval' delivered, the run resumed"
    assert status_of(store, "parked") is RunStatus.RUNNING
    [(task_id, kwargs)] = queued_steps(redis_client, "echo")
    assert (task_id, kwargs["run_id"], kwargs["step"]) == ("parked:1", "parked", 1)
    [call] = store.load_run("parked").steps[0].tool_calls  # type: ignore[union-attr]
    assert call.result == {"signal": "approval", "data": {"ok": True}}

    again = agentq(cli_settings, "signal", "parked", "approval", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"run_id": "parked", "name": "approval", "resumed": False}
    assert len(queued_steps(redis_client, "echo")) == 1  # nothing published the second time


def test_a_signal_from_a_file_and_each_refusal_has_its_exit_code(
    cli_settings: Settings, store: SessionStore, tmp_path: Path
) -> None:
    park_on_signal(store, "parked")
    finish(store, "done")
    start_running(store, "busy")
    unknown = agentq(cli_settings, "signal", "nobody", "approval")
    assert unknown.returncode == ExitCode.UNKNOWN_RUN == 7
    assert "no run 'nobody'" in one_line(unknown)
    ended = agentq(cli_settings, "signal", "done", "approval")
    assert ended.returncode == ExitCode.RUN_ENDED == 8
    assert "has ended (succeeded)" in one_line(ended)
    other = agentq(cli_settings, "signal", "parked", "payment")
    assert other.returncode == ExitCode.NOT_WAITING == 9
    assert "waiting for signal 'approval'" in one_line(other)
    running = agentq(cli_settings, "signal", "busy", "approval")
    assert running.returncode == ExitCode.NOT_WAITING
    small = {"AGENTQ_ORCHESTRATION__SIGNAL_MAX_BYTES": "64"}
    large = agentq(cli_settings, "signal", "parked", "approval", "--data", json.dumps("x" * 100),
                   env=small)  # fmt: skip
    assert large.returncode == ExitCode.REFUSED == 2
    assert "the limit is 64" in one_line(large)
    bad = agentq(cli_settings, "signal", "parked", "approval", "--data", "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    foreign = agentq(cli_settings, "signal", "parked", "approval", "--tenant", "acme")
    assert foreign.returncode == ExitCode.UNKNOWN_RUN
    assert status_of(store, "parked") is RunStatus.WAITING  # none of them resumed it
    payload = tmp_path / "approval.json"
    payload.write_text('["yes", 2]')
    sent = agentq(cli_settings, "signal", "parked", "approval", "--data-file", str(payload))
    assert sent.returncode == 0, sent.stderr
    [call] = store.load_run("parked").steps[0].tool_calls  # type: ignore[union-attr]
    assert call.result["data"] == ["yes", 2]


def test_cancel_ends_a_parked_run_and_its_result_raises_cancelled(
    cli_settings: Settings, store: SessionStore
) -> None:
    park_on_signal(store, "parked")
    out = agentq(cli_settings, "cancel", "parked")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "run parked: cancelled"
    run = store.load_run("parked")
    assert run is not None and run.status is RunStatus.CANCELLED
    assert run.error_type is not None and run.error_type.value == "cancelled"
    celery = create_celery(cli_settings)
    try:
        with pytest.raises(RunCancelledError):
            celery.AsyncResult("parked").get(timeout=5)
    finally:
        celery.close()
    again = agentq(cli_settings, "cancel", "parked", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"run_id": "parked", "was": "cancelled", "cancelled": False}
    signal = agentq(cli_settings, "signal", "parked", "approval")
    assert signal.returncode == ExitCode.RUN_ENDED


def test_cancel_asks_a_running_run_to_stop_and_leaves_an_ended_one(
    cli_settings: Settings, store: SessionStore, redis_client: redis.Redis
) -> None:
    start_running(store, "busy")
    finish(store, "done")
    out = agentq(cli_settings, "cancel", "busy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "run busy: asked to stop at its next step"
    run = store.load_run("busy")
    assert run is not None and run.status is RunStatus.RUNNING
    assert run.cancel_requested_at is not None
    assert redis_client.exists(cancel_key("busy"))
    ended = agentq(cli_settings, "cancel", "done")
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "run done: already ended (succeeded): nothing to do"
    assert status_of(store, "done") is RunStatus.SUCCEEDED
    unknown = agentq(cli_settings, "cancel", "nobody")
    assert unknown.returncode == ExitCode.UNKNOWN_RUN


def test_cancel_of_a_parent_cancels_its_sub_agent_runs(
    cli_settings: Settings, store: SessionStore
) -> None:
    park_on_children(store, "root", [("kid-a", "helper", "a"), ("kid-b", "scout", "b")])
    park_on_children(
        store, "kid-a", [("grandkid", "scout", "g")], agent="helper", lineage=["boss"],
        parent_id="root",
    )  # fmt: skip
    out = agentq(cli_settings, "cancel", "root")
    assert out.returncode == 0, out.stderr
    got = store.read(
        lambda conn: dict(
            conn.execute(select(runs.c.id, runs.c.status).where(runs.c.id != "x")).all()
        )
    )
    assert got == {
        "root": RunStatus.CANCELLED,
        "kid-a": RunStatus.CANCELLED,  # was parked on its own child
        "kid-b": RunStatus.CANCELLED,  # had not started: stored cancelled
        "grandkid": RunStatus.CANCELLED,
    }


def test_runs_show_prints_the_tree_the_parent_and_the_wait(
    cli_settings: Settings, store: SessionStore
) -> None:
    park_on_children(store, "root", [("kid-a", "helper", "a"), ("kid-b", "scout", "b")])
    park_on_children(
        store, "kid-a", [("grandkid", "scout", "g")], agent="helper", lineage=["boss"],
        parent_id="root",
    )  # fmt: skip
    out = agentq(cli_settings, "runs", "show", "root")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    waiting = next(line for line in lines if line.startswith("waiting for"))
    assert "2 sub-agent run(s) to end (step 0)" in waiting
    tree = [line for line in lines if "kid-" in line or "grandkid" in line]
    assert len(tree) == 3
    kid_a, grandkid, kid_b = tree
    assert "helper" in kid_a and "waiting" in kid_a
    assert "scout" in grandkid and "queued" in grandkid
    assert "scout" in kid_b and "queued" in kid_b
    # The grandchild hangs one level deeper than its parent.
    assert grandkid.index("scout") > kid_a.index("helper")

    child = agentq(cli_settings, "runs", "show", "kid-a", "--json")
    view = json.loads(child.stdout)
    assert view["parent_id"] == "root"
    assert view["waiting_for"]["kind"] == "children" and view["waiting_for"]["pending"] == 1
    assert [(c["id"], c["status"]) for c in view["children"]] == [("grandkid", "queued")]
    shown = agentq(cli_settings, "runs", "show", "kid-a")
    assert any(line.startswith("parent") and "root" in line for line in shown.stdout.splitlines())


def test_runs_list_filters_waiting_and_cancelled(
    cli_settings: Settings, store: SessionStore
) -> None:
    park_on_signal(store, "parked")
    park_on_signal(store, "stopped")
    assert agentq(cli_settings, "cancel", "stopped").returncode == 0
    for status, expected in (("waiting", ["parked"]), ("cancelled", ["stopped"])):
        out = agentq(cli_settings, "runs", "list", "--status", status, "--json")
        assert out.returncode == 0, out.stderr
        assert [r["id"] for r in json.loads(out.stdout)["items"]] == expected
