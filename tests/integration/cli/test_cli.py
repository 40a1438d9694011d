"""`agentq submit` and `agentq status` against a real worker."""

from __future__ import annotations

import pytest

from app.cli.exits import ExitCode
from app.local.processes import free_port
from tests.fixtures.cli import agentq, one_line

pytestmark = pytest.mark.integration


def test_submit_waits_for_the_answer_and_status_lists_the_run(settings, start_worker, store):
    start_worker(["research"])
    out = agentq(settings, "submit", "research", 'add [tool:calculator {"expression": "20+22"}]')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("Answer: 42")
    run_id = out.stdout.split()[1]
    assert store.load_run(run_id).status == "succeeded"

    status = agentq(settings, "status", "--agent", "research")
    assert status.returncode == 0, status.stderr
    assert run_id in status.stdout and "succeeded" in status.stdout


def test_submit_refuses_bad_input_with_exit_code_2(settings, redis_client):
    out = agentq(settings, "submit", "nobody", "hi", "--no-wait")
    assert out.returncode == ExitCode.REFUSED == 2
    assert one_line(out).startswith("agentq: refused: unknown agent 'nobody'")
    assert redis_client.dbsize() == 0


def test_submit_with_redis_down_says_so_in_one_line_at_once(settings):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    env = {"AGENTQ_REDIS_URL": url, "AGENTQ_BROKER_URL": url, "AGENTQ_RESULT_BACKEND": url}
    out = agentq(settings, "submit", "research", "hi", env=env)
    assert out.returncode == ExitCode.REDIS_UNAVAILABLE
    assert one_line(out) == (
        f"agentq: Redis at {url} refused the connection: check that Redis runs at that host "
        "and port"
    )


def test_an_unknown_agent_is_refused_before_redis_is_asked(settings):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    env = {"AGENTQ_REDIS_URL": url, "AGENTQ_BROKER_URL": url, "AGENTQ_RESULT_BACKEND": url}
    out = agentq(settings, "submit", "nobody", "hi", env=env)
    assert out.returncode == ExitCode.REFUSED
    assert one_line(out).startswith("agentq: refused: unknown agent 'nobody'")


def test_a_wait_past_the_timeout_says_the_run_may_still_finish(settings):
    out = agentq(settings, "submit", "research", "nobody serves this queue", "--timeout", "0.5")
    assert out.returncode == ExitCode.TIMED_OUT
    run_id = out.stdout.split()[1]
    assert one_line(out) == (
        f"agentq: run {run_id}: no answer within 0.5 s; it may still finish (see `agentq "
        "status`), or wait longer with --timeout"
    )


def test_a_failed_run_is_one_line_with_its_reason(settings, start_worker):
    start_worker(["research"])
    out = agentq(settings, "submit", "research", "fail [error:model is on fire]")
    assert out.returncode == ExitCode.RUN_FAILED
    run_id = out.stdout.split()[1]
    line = one_line(out)
    assert line.startswith(f"agentq: run {run_id} failed (RunFailedError): model call failed")
    assert "model is on fire" in line


def test_status_on_a_database_without_its_schema_says_how_to_make_it(settings, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    out = agentq(settings, "status", env={"AGENTQ_DATABASE_URL": url})
    assert out.returncode == ExitCode.STORE_UNAVAILABLE
    assert one_line(out) == (
        f"agentq: the session store at {url} has no schema (no such table: runs); run "
        "`agentq db upgrade` or start with AGENTQ_AUTO_MIGRATE=true"
    )
