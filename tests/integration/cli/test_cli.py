"""`agentq submit` and `agentq status` against a real worker."""

from __future__ import annotations

import pytest

from tests.fixtures.cli import agentq

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
    assert out.returncode == 2
    assert "unknown agent 'nobody'" in out.stdout
    assert redis_client.dbsize() == 0
