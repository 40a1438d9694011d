"""`agentq worker --include`: the user's modules are imported at start; an agent whose tool no
module registers stops the worker in one line, exit 1, before it connects to Redis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from celery import Celery

from app.cli.exits import ExitCode
from app.config import child_env
from app.local.processes import free_port, stop_process
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration

AGENTS = "agents:\n  - name: weather\n    system_prompt: You forecast.\n    tools: [forecast]\n"
MYTOOLS = '''
from app import tool


@tool
def forecast(city: str, days: int = 3) -> str:
    """The weather forecast for a city."""
    return "sunny"
'''
# The console script, as a user runs it: unlike `python -m`, it does not put the current
# directory on sys.path, so finding mytools there is the loader's doing.
AGENTQ = str(Path(sys.executable).with_name("agentq"))
REFUSAL = (
    "agentq: agent 'weather' uses tool 'forecast', which is not registered; import the module "
    "that declares it with `agentq worker --include <module>` or AGENTQ_INCLUDE\n"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder: an agents file naming the tool `forecast`, declared in mytools.py."""
    (tmp_path / "agents.yaml").write_text(AGENTS)
    (tmp_path / "mytools.py").write_text(MYTOOLS)
    return tmp_path


def worker_env(project: Path, redis_url: str) -> dict[str, str]:
    env = child_env(
        {
            "AGENTQ_REDIS_URL": redis_url,
            "AGENTQ_BROKER_URL": redis_url,
            "AGENTQ_RESULT_BACKEND": redis_url,
            "AGENTQ_AGENTS_FILE": str(project / "agents.yaml"),
            "AGENTQ_DATABASE_URL": f"sqlite:///{project / 'agentq.sqlite3'}",
            "AGENTQ_REDIS_STARTUP_WAIT_S": "0",
            "AGENTQ_HEALTH__PORT": "0",
        }
    )
    env.pop("AGENTQ_INCLUDE", None)
    return env


def run_worker(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``agentq worker --agents weather ARGS`` in ``project`` with nobody listening at its
    Redis URL."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    return subprocess.run(
        [AGENTQ, "worker", "--agents", "weather", *args],
        cwd=project, env=worker_env(project, closed), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_an_unregistered_tool_stops_the_worker_in_one_line_before_redis_is_asked(project):
    out = run_worker(project)
    assert out.stderr == REFUSAL
    assert out.returncode == ExitCode.ERROR == 1


def test_with_include_the_worker_gets_past_the_tool_check(project):
    out = run_worker(project, "--include", "mytools")
    # The next check at start is Redis, which nobody serves here.
    assert out.stderr.startswith("agentq: Redis at redis://127.0.0.1:"), out.stderr
    assert "refused the connection" in out.stderr and "forecast" not in out.stderr


def test_an_included_module_that_does_not_import_is_named(project):
    out = run_worker(project, "--include", "mytools,nosuch")
    assert out.stderr == (
        "agentq: cannot import AGENTQ_INCLUDE module 'nosuch': ModuleNotFoundError: No module "
        "named 'nosuch'\n"
    )
    assert out.returncode == ExitCode.ERROR


def test_with_include_the_worker_starts_and_answers(project, redis_url, redis_client):
    node = f"weather-{uuid.uuid4().hex[:8]}@localhost"
    log = (project / "worker.log").open("wb")
    proc = subprocess.Popen(
        [AGENTQ, "worker", "--agents", "weather", "--include", "mytools", "-n", node],
        cwd=project, env=worker_env(project, redis_url), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ping = Celery(broker=redis_url, set_as_current=False)
    try:
        wait_for(
            lambda: proc.poll() is not None or ping.control.ping(destination=[node], timeout=0.5),
            60,
            "the worker to answer a ping",
        )
        assert proc.poll() is None, (project / "worker.log").read_text()
    finally:
        code = stop_process(proc, timeout_s=30)
        ping.close()
        log.close()
    assert code == 0, (project / "worker.log").read_text()


def test_the_celery_app_of_plain_celery_imports_agentq_include(project):
    # What `celery -A app.celery_app worker` loads: the app built from the environment.
    show_queues = (
        "from app.celery_app import celery; print([q.name for q in celery.conf.task_queues])"
    )
    env = {**worker_env(project, f"redis://127.0.0.1:{free_port()}/0"), "AGENTQ_INCLUDE": "mytools"}
    out = subprocess.run(
        [sys.executable, "-c", show_queues],
        cwd=project, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['agent.weather']"
