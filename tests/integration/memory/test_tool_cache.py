"""The tool-result cache on real Redis: single-flight across real processes (one execution for
identical calls at once; a SIGKILLed owner's waiters take over), keys, TTLs, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.tools import ToolContext, tool_spec
from app.config import CacheSettings
from app.constants import tool_cache_key
from app.errors import ToolError
from app.inference.factory import build_pools
from app.memory.tool_cache import ToolCache, call_identity
from app.tasks.runner import Outcome, StepMessage, StepRunner
from bench import cache_tools
from tests.fixtures import steps as recorded
from tests.fixtures.waiting import wait_for

SPEC = tool_spec(cache_tools.TOOL)


@pytest.fixture
def start_calls(redis_url: str) -> Iterator[Any]:
    """Factory: a process of ``bench.cache_tools`` making identical calls; all killed after."""
    started: list[subprocess.Popen[str]] = []

    def start(*options: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cache_tools", redis_url, *options],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def results(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return json.loads(out)


def executions(redis_client) -> int:
    return int(redis_client.get(cache_tools.EXECUTIONS_KEY) or 0)


def test_identical_calls_from_two_processes_run_the_tool_once(redis_client, start_calls):
    options = ("--threads", "20", "--sleep-s", "0.5", "--margin-s", "10", "--wait-go")
    first, second = start_calls(*options), start_calls(*options)
    cache_tools.go(redis_client, 2)  # both processes' threads call together
    done = results(first) + results(second)
    expected = {"city": "Paris", "days": 3, "forecast": "sunny"}
    assert [d.get("result") for d in done] == [expected] * 40
    assert executions(redis_client) == 1


def test_the_waiters_of_a_sigkilled_owner_take_over_and_get_a_result(redis_client, start_calls):
    owner = start_calls("--threads", "1", "--sleep-s", "120")
    wait_for(lambda: executions(redis_client) == 1, 30, "the owner's call")
    waiters = start_calls("--threads", "5", "--sleep-s", "0.2")
    time.sleep(0.3)  # the waiters are polling the owner's lock
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    done = results(waiters)
    assert [d.get("result", d) for d in done] == [
        {"city": "Paris", "days": 3, "forecast": "sunny"}
    ] * 5
    assert executions(redis_client) == 2  # the dead owner's and one waiter's


def test_the_waiters_of_a_failed_call_get_its_error_and_it_is_not_cached(redis_client, start_calls):
    options = ("--threads", "10", "--sleep-s", "0.5", "--margin-s", "10", "--wait-go", "--fail")
    first, second = start_calls(*options), start_calls(*options)
    cache_tools.go(redis_client, 2)
    done = results(first) + results(second)
    errors = {d.get("error") for d in done}
    assert errors == {f"tool {cache_tools.TOOL!r} failed: RuntimeError: the probe was told to fail"}
    assert executions(redis_client) == 1
    later = results(start_calls("--threads", "1", "--sleep-s", "0"))
    assert later[0]["result"]["forecast"] == "sunny"
    assert executions(redis_client) == 2


def run_probe(cache: ToolCache, redis_client, args: dict[str, Any], spec=SPEC) -> Any:
    ctx = ToolContext("run", 0, "agent", redis_client)
    values = spec.validate(args)
    return cache.call(spec, values, 1.0, lambda: spec.invoke(values, ctx))


def test_equivalent_arguments_share_a_key_other_arguments_and_versions_do_not(redis_client):
    cache = ToolCache(redis_client, CacheSettings())
    run_probe(cache, redis_client, {"city": "Paris"})
    run_probe(cache, redis_client, {"days": "3", "city": "Paris"})  # default, coerced, reordered
    assert executions(redis_client) == 1
    run_probe(cache, redis_client, {"city": "Rome"})
    run_probe(cache, redis_client, {"city": "Paris", "days": 4})
    assert executions(redis_client) == 3
    run_probe(cache, redis_client, {"city": "Paris"}, dataclasses.replace(SPEC, version="2"))
    assert executions(redis_client) == 4


def test_a_result_lives_the_tools_ttl_else_the_settings(redis_client):
    cache = ToolCache(redis_client, CacheSettings(tool_ttl_s=100))
    run_probe(cache, redis_client, {"city": "Paris"})
    key = tool_cache_key(call_identity(SPEC, SPEC.validate({"city": "Paris"})), "result")
    assert 0 < redis_client.pttl(key) <= 100_000
    short = dataclasses.replace(SPEC, cache_ttl_s=5)
    run_probe(cache, redis_client, {"city": "Rome"}, short)
    key = tool_cache_key(call_identity(short, short.validate({"city": "Rome"})), "result")
    assert 0 < redis_client.pttl(key) <= 5_000
    assert not redis_client.keys("*:lock")  # every lock released


def test_a_failure_is_raised_and_not_kept_for_later_calls(redis_client):
    cache = ToolCache(redis_client, CacheSettings())
    calls: list[int] = []

    def failing() -> Any:
        calls.append(1)
        raise ToolError("tool 'bench_cache_probe' failed: boom")

    values = SPEC.validate({"city": "Oslo"})
    for _ in range(2):
        with pytest.raises(ToolError, match="boom"):
            cache.call(SPEC, values, 1.0, failing)
    assert len(calls) == 2
    assert cache.call(SPEC, values, 1.0, lambda: "fine") == "fine"
    assert cache.call(SPEC, values, 1.0, failing) == "fine"


@pytest.mark.parametrize(("tools_cached", "expected"), [(True, 1), (False, 2)])
def test_two_runs_share_a_deterministic_tools_result_each_step_keeping_it(
    redis_client, store, settings, tools_cached, expected
):
    settings = settings.model_copy(update={"cache": CacheSettings(tools=tools_cached)})
    spec = AgentSpec(name="prober", tools=(cache_tools.TOOL,), max_steps=3)
    pools = build_pools(settings, kinds=["triton"])
    runner = StepRunner(settings, AgentRegistry([spec]), store, redis_client, pools, "w1")
    prompt = f'look [tool:{cache_tools.TOOL} {{"city": "Paris"}}]'
    try:
        for run_id in ("run-1", "run-2"):
            step = runner.run_step(StepMessage(run_id, spec.name, 0, prompt))
            assert step.outcome is Outcome.NEXT
    finally:
        for pool in pools.values():
            pool.close()
    kept = [recorded.result(store.load_run(r).steps[0]) for r in ("run-1", "run-2")]
    assert kept == [{"city": "Paris", "days": 3, "forecast": "sunny"}] * 2
    assert executions(redis_client) == expected
