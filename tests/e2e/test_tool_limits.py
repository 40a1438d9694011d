"""A tool call cannot freeze a worker: a calculator bomb and an oversized tool result, sent
to a live worker, are answered with a tool error while 20 ordinary runs submitted right
after all finish and /livez stays green throughout."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.local.processes import free_port
from app.producer.submit import submit
from tests.fixtures import steps as recorded
from tests.fixtures.waiting import alive

pytestmark = pytest.mark.e2e

BOMBS = ["(((9**64)**64)**64)**64", "((((9**64)**64)**64)**64)**64"]
RESULT_MAX_BYTES = 2048
BIG_VALUE = "x" * 8000


class LivezProbe(threading.Thread):
    """Polls /livez until stopped; remembers every answer (status code or error)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/livez"
        self.answers: list[int | str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.answers.append(httpx.get(self.url, timeout=5).status_code)
            except httpx.HTTPError as exc:
                self.answers.append(type(exc).__name__)
            self.done.wait(0.2)

    def stop(self) -> list[int | str]:
        self.done.set()
        self.join(10)
        return self.answers


def tool_processes(parent: int) -> set[int]:
    """PIDs of the tool processes below ``parent`` (any depth)."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if "app.agents.sandbox" in commands.get(child, ""):
                found.add(child)
    return found


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def tool_result(store, run_id: str, tool: str):
    state = store.load_run(run_id)
    assert state is not None, run_id
    results = [recorded.result(s) for s in state.steps if recorded.tool(s) == tool]
    assert results, f"run {run_id} has no {tool} step"
    return results[-1]


def test_a_bomb_and_an_oversized_result_get_tool_errors_while_other_runs_move(
    celery_app, start_worker, store
):
    port = free_port()
    env = {
        "AGENTQ_HEALTH__PORT": str(port),
        "AGENTQ_HEALTH__HEARTBEAT_INTERVAL_S": "0.5",
        "AGENTQ_LIMITS__TOOL_RESULT_MAX_BYTES": str(RESULT_MAX_BYTES),
    }
    worker = start_worker(["coder"], env=env)
    probe = LivezProbe(port)
    probe.start()
    try:
        bombs = [
            submit(
                "coder", f"[tool:calculator {json.dumps({'expression': b})}] go", celery=celery_app
            )
            for b in BOMBS
        ]
        set_big = json.dumps({"key": "big", "value": BIG_VALUE})
        oversized = submit(
            "coder",
            f'[tool:kv_set {set_big}] [tool:kv_get {{"key": "big"}}] read it back',
            celery=celery_app,
        )
        time.sleep(1)
        ordinary = [
            submit(
                "coder", f'[tool:calculator {{"expression": "17*23+{i}"}}] q{i}', celery=celery_app
            )
            for i in range(20)
        ]
        for i, run in enumerate(ordinary):
            assert run.get(timeout=120) == f"Answer: {391 + i}"
        for run in bombs:
            run.get(timeout=120)
        oversized.get(timeout=120)
        pids = tool_processes(worker.pid)
        abandoned = metric(port, "agentq_tool_calls_abandoned_total")
        calculator_errors = metric(port, "agentq_tool_errors_total", tool="calculator")
    finally:
        answers = probe.stop()

    for run in bombs:
        assert tool_result(store, run.id, "calculator") == {
            "error": "result would be larger than 4096 bits"
        }
    kept = tool_result(store, oversized.id, "kv_get")
    marker = f"[truncated: {RESULT_MAX_BYTES} of {len(BIG_VALUE) + 2} bytes]"
    assert kept["error"] == f"tool result too large {marker}"
    assert kept["truncated"] == '"' + BIG_VALUE[: RESULT_MAX_BYTES - 1] + " " + marker
    assert calculator_errors == len(BOMBS)
    assert abandoned == 0  # refused by the bounds, not by a deadline

    assert len(answers) >= 5
    assert set(answers) == {200}, answers
    assert pids, "the calculator ran in a tool process"
    worker.stop()
    assert not [pid for pid in pids if alive(pid)], "tool processes outlived their worker"
