"""A developer's own package, outside app/: an agent and a typed tool declared in Python,
served by ``agentq worker --include`` against real Redis and Triton. The model's call with a
bad argument comes back to it as a tool error, and the run recovers with a good one."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.local.workers import WorkerProcess
from tests.fixtures.cli import agentq

pytestmark = pytest.mark.e2e

PACKAGE = '''\
"""The weather agent of a user's package."""

from app import Agent, tool

CALLS = "calls.log"


@tool
def forecast(city: str, days: int = 1) -> dict:
    """The weather in a city, some days ahead.

    Args:
        city: Name of the city.
        days: How many days ahead, 1 to 7.
    """
    with open(CALLS, "a", encoding="utf-8") as log:
        log.write(f"{city} {days}\\n")
    return {"city": city, "days": days, "sky": "sunny"}


Agent("weather", system_prompt="You forecast the weather.", tools=[forecast], max_steps=4)
'''


def test_a_worker_serves_an_agent_and_its_typed_tool_from_the_users_package(
    settings, celery_app, tmp_path: Path, store
) -> None:
    package = tmp_path / "site" / "weatherpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "agents.py").write_text(PACKAGE)
    workdir = tmp_path / "work"
    workdir.mkdir()
    user_env = {"PYTHONPATH": str(tmp_path / "site")}
    worker = WorkerProcess(
        settings,
        ["weather"],
        log_dir=tmp_path,
        extra_env=user_env,
        include=["weatherpkg.agents"],
        cwd=workdir,  # the tool writes its calls.log here
    )
    try:
        worker.start(celery_app)
        asks = (
            'Paris in two days [tool:forecast {"city": "Paris", "days": "soon"}] '
            '[tool:forecast {"city": "Paris", "days": 2}]'
        )
        out = agentq(
            settings, "submit", "weather", asks, "--timeout", "60",
            env={**user_env, "AGENTQ_INCLUDE": "weatherpkg.agents"},
        )  # fmt: skip
    finally:
        worker.stop()
    assert out.returncode == 0, out.stderr
    answer = out.stdout.strip().splitlines()[-1]
    assert answer == 'Answer: {"city":"Paris","days":2,"sky":"sunny"}'
    run_id = out.stdout.split()[1]
    run = store.load_run(run_id)
    assert run is not None and run.status == "succeeded"
    bad, good, final = run.steps
    [refused] = bad.tool_calls
    assert refused.error and refused.args == {"city": "Paris", "days": "soon"}
    assert "invalid arguments for tool 'forecast'" in refused.result["error"]
    assert "days" in refused.result["error"]
    [made] = good.tool_calls
    assert (made.error, made.result) == (False, {"city": "Paris", "days": 2, "sky": "sunny"})
    assert final.kind == "final"
    # The bad call never reached the function; the good one did, once, validated.
    assert (workdir / "calls.log").read_text() == "Paris 2\n"
    log = worker.log_path.read_text()
    assert "Traceback" not in log, log
