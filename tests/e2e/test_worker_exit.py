"""A worker that cannot go on exits non-zero with the reason in one line (a supervisor
restarts it and counts the failure); one stopped by SIGTERM exits 0."""

from __future__ import annotations

import pytest

from app.local.processes import free_port
from tests.fixtures.cli import agentq, one_line

pytestmark = pytest.mark.e2e


def test_a_worker_whose_redis_is_unreachable_exits_1_with_one_line(settings) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    env = {"AGENTQ_REDIS_URL": url, "AGENTQ_BROKER_URL": url, "AGENTQ_RESULT_BACKEND": url}
    out = agentq(
        settings, "worker", "--agents", "research", env={**env, "AGENTQ_REDIS_STARTUP_WAIT_S": "0"}
    )
    assert out.returncode == 1
    assert one_line(out) == (
        f"agentq: Redis at {url} refused the connection: check that Redis runs at that host "
        "and port"
    )


def test_a_worker_stopped_by_an_error_exits_with_celerys_code_and_the_reason(settings) -> None:
    # The health endpoints cannot bind an address this host does not have: Celery's
    # "Unrecoverable error" ends the worker once it has started.
    env = {"AGENTQ_HEALTH__HOST": "192.0.2.1"}  # TEST-NET-1, never a local address
    out = agentq(settings, "worker", "--agents", "research", "-n", "doomed@localhost", env=env)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("agentq: worker doomed@localhost stopped (exit code 1): ")
    assert "Unrecoverable error: OSError(99" in last


def test_a_worker_stopped_by_sigterm_exits_0(start_worker) -> None:
    assert start_worker(["research"]).stop() == 0
