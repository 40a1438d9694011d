"""Tool calls under deadlines: abandoned threads, killed tool processes, memory limits."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from app.agents.loader import import_modules
from app.agents.sandbox import ToolSandbox
from app.agents.tools import ToolContext
from app.errors import ToolArgumentsError, ToolError, ToolTimeoutError
from tests.fixtures import tools as misbehaving
from tests.fixtures.declarations import UserCode, declarations_restored
from tests.fixtures.waiting import alive

CTX = ToolContext(run_id="r1", step=2, agent="research", redis=object(), call_id="c7")


def abandoned(tool: str) -> float:
    value = REGISTRY.get_sample_value("agentq_tool_calls_abandoned_total", {"tool": tool})
    return value or 0.0


@pytest.fixture
def sandbox() -> Iterator[ToolSandbox]:
    box = ToolSandbox(threads=2, processes=1, default_deadline_s=30, memory_mb=512)
    started: set[int] = set()
    original = box.processes._take

    def take():  # remember every tool process, to check that none outlives the test
        child = original()
        started.add(child.pid)
        return child

    box.processes._take = take  # type: ignore[method-assign]
    try:
        yield box
    finally:
        box.close()
        for pid in started:
            assert not alive(pid), f"tool process {pid} still running"


def test_in_process_tool_past_its_deadline_is_abandoned_and_counted(sandbox):
    before = abandoned("test_sleep")
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError, match="deadline"):
        sandbox.call("test_sleep", {"seconds": 30}, CTX)
    assert time.monotonic() - started < 20  # returned at its deadline, not after the sleep
    assert abandoned("test_sleep") == before + 1
    assert sandbox.call("test_sleep", {"seconds": 0}, CTX) == "slept"  # the other thread


def test_stuck_threads_are_bounded_a_call_finding_none_free_times_out(sandbox):
    misbehaving.RELEASE.clear()
    try:
        for _ in range(2):  # both threads stuck in abandoned calls
            with pytest.raises(ToolTimeoutError, match="abandoned"):
                sandbox.call("test_block", {}, CTX)
        with pytest.raises(ToolTimeoutError, match="all 2 tool threads are busy"):
            sandbox.call("test_sleep", {"seconds": 0}, CTX)
    finally:
        misbehaving.RELEASE.set()
    # Once the abandoned calls end, their threads serve again.
    assert sandbox.call("test_sleep", {"seconds": 0}, CTX) == "slept"


def test_cpu_heavy_tool_in_a_busy_loop_is_killed_and_the_pool_serves_the_next_call(sandbox):
    first = sandbox.call("test_whoami", {}, CTX)["pid"]
    before = abandoned("test_spin")
    with pytest.raises(ToolTimeoutError, match="process was killed"):
        sandbox.call("test_spin", {}, CTX)
    assert abandoned("test_spin") == before + 1
    assert not alive(first)
    second = sandbox.call("test_whoami", {}, CTX)
    assert second["pid"] not in (first, os.getpid())
    assert sandbox.call("calculator", {"expression": "17 * 23"}, CTX) == 391


def test_cpu_heavy_tool_runs_in_another_process_without_redis(sandbox):
    assert sandbox.call("test_whoami", {}, CTX) == {
        "pid": sandbox.processes.pids()[0],
        "redis": False,
        "run_id": "r1",
        "call_id": "c7",
    }


def test_memory_limit_turns_a_huge_allocation_into_a_tool_error(sandbox):
    assert sandbox.call("test_allocate", {"mb": 16}, CTX) == 16 * 1024 * 1024
    with pytest.raises(ToolError, match="MemoryError"):
        sandbox.call("test_allocate", {"mb": 4096}, CTX)
    assert sandbox.call("test_allocate", {"mb": 16}, CTX) == 16 * 1024 * 1024


def test_calculator_bomb_is_refused_in_the_tool_process(sandbox):
    with pytest.raises(ToolError, match="larger than 4096 bits"):
        sandbox.call("calculator", {"expression": "(((9**64)**64)**64)**64"}, CTX)


def test_bad_arguments_and_unknown_tools_fail_before_any_process_starts(sandbox):
    with pytest.raises(ToolArgumentsError, match="invalid arguments for tool 'calculator'"):
        sandbox.call("calculator", {"expr": "1"}, CTX)
    with pytest.raises(ToolError, match="unknown tool"):
        sandbox.call("rm_rf", {}, CTX)
    assert sandbox.processes.pids() == []


def test_a_cpu_heavy_tool_of_a_module_on_the_workers_path_runs_in_a_tool_process(
    sandbox, tmp_path, monkeypatch
):
    # The module is found through the worker's sys.path only (not the tool process's cwd).
    code = UserCode(tmp_path)
    code.module(
        "user_heavy_tools",
        """
        import os
        from app import tool

        @tool(cpu_heavy=True)
        def square(n: int) -> list[int]:
            '''Square a number.'''
            return [n * n, os.getpid()]
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with declarations_restored():
            import_modules(["user_heavy_tools"])
            square, pid = sandbox.call("square", {"n": "7"}, CTX)  # validated, coerced there too
    finally:
        code.forget()
    assert square == 49
    assert pid == sandbox.processes.pids()[0] != os.getpid()


def test_a_closed_sandbox_starts_no_tool_process(sandbox):
    sandbox.call("calculator", {"expression": "1 + 1"}, CTX)
    pid = sandbox.processes.pids()[0]
    sandbox.close()
    assert not alive(pid)
    with pytest.raises(ToolError, match="shutting down"):
        sandbox.call("calculator", {"expression": "1 + 1"}, CTX)
