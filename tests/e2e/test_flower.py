"""`agentq flower` against a real worker: basic auth required, each task shown with its agent
type, run id, step and the tool it called, a run's steps linked by root and parent ids, secrets
in a run's input masked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.config import Settings, child_env, settings_env
from app.local.processes import free_port, log_tail, stop_process, wait_until
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

USER, PASSWORD = "ops", "fl0wer-pa55:with,comma"
SECRET = "sk-live-abcdef123456"


@dataclass
class Flower:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def get(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx.Response:
        return httpx.get(self.url + path, auth=auth, timeout=5)


def flower_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    return child_env(
        {
            **settings_env(settings),
            "AGENTQ_FLOWER__PORT": str(port),
            "AGENTQ_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )


@pytest.fixture
def start_flower(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    """Factory: `agentq flower` on a free port with credentials; stopped by PID afterwards.

    With ``workers`` (the default) it returns once Flower has heard a worker's heartbeat.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(workers: bool = True) -> Flower:
        port = free_port()
        env = flower_env(settings, port, AGENTQ_FLOWER__BASIC_AUTH=f"{USER}:{PASSWORD}")
        log_path = tmp_path / f"flower-{port}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "flower"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        started.append(proc)
        flower = Flower(proc, f"http://127.0.0.1:{port}", log_path)

        def serving() -> bool:
            try:
                return flower.get("/api/workers").status_code == 200
            except httpx.TransportError:
                return False

        def hears_events() -> bool:
            # Flower serves HTTP before its event receiver subscribes; a task whose
            # task-received event came earlier would show without its arguments.
            return "flower_worker_online{" in flower.get("/metrics", auth=None).text

        ready = wait_until(serving, 60, proc) and (not workers or wait_until(hears_events, 30))
        if not ready:
            raise AssertionError(f"flower did not start:\n{log_tail(log_path)}")
        return flower

    yield start
    for proc in started:
        stop_process(proc)


def task_seen(flower: Flower, task_id: str, state: str | None = None) -> dict | None:
    response = flower.get(f"/api/task/info/{task_id}")
    if response.status_code != 200:
        return None
    task = response.json()
    if state is not None and task.get("state") != state:
        return None
    return task


def wait_for_task(flower: Flower, task_id: str, state: str | None = None) -> dict:
    found: dict = {}

    def seen() -> bool:
        task = task_seen(flower, task_id, state)
        if task:
            found.update(task)
        return bool(task)

    assert wait_until(seen, 30), f"flower never showed task {task_id} ({state or 'any state'})"
    return found


def test_flower_shows_each_step_with_agent_and_run_id_behind_basic_auth(
    celery_app, start_worker, start_flower
) -> None:
    start_worker(["research"], env={"AGENTQ_WORKER__TASK_EVENTS": "true"})
    flower = start_flower()
    run = submit("research", 'sum [tool:calculator {"expression": "2+2"}]', celery=celery_app)
    assert run.get(timeout=60) == "Answer: 4"

    first = wait_for_task(flower, run.id)
    assert first["name"] == "research"  # the agent type (Celery's shadow name)
    assert first["kwargs"].startswith("{'agent': 'research', 'input': 'sum [tool:calculator")
    second = wait_for_task(flower, f"{run.id}:1")
    assert f"'run_id': '{run.id}'" in second["kwargs"]
    assert "'agent': 'research'" in second["kwargs"] and "'step': 1" in second["kwargs"]
    assert second["worker"].startswith("research-")

    listed = flower.get("/api/tasks").json()
    assert {run.id, f"{run.id}:1"} <= set(listed)
    for path in ("/api/tasks", f"/api/task/info/{run.id}", "/api/workers", "/"):
        assert flower.get(path, auth=None).status_code == 401, path
        assert flower.get(path, auth=(USER, "wrong")).status_code == 401, path
        assert flower.get(path, auth=("intruder", PASSWORD)).status_code == 401, path


def test_flower_lists_a_runs_steps_with_agent_tool_and_links_to_the_first(
    celery_app, start_worker, start_flower
) -> None:
    start_worker(["research"], env={"AGENTQ_WORKER__TASK_EVENTS": "true"})
    flower = start_flower()
    run = submit(
        "research",
        'count [tool:calculator {"expression": "2+2"}] [tool:word_count {"text": "a b c"}]',
        celery=celery_app,
    )
    run.get(timeout=60)
    ids = [run.id, f"{run.id}:1", f"{run.id}:2"]
    for task_id in ids:
        wait_for_task(flower, task_id, "SUCCESS")

    listed = flower.get("/api/tasks").json()
    steps = [listed[task_id] for task_id in ids]
    assert [task["name"] for task in steps] == ["research"] * 3
    assert [task["result"] for task in steps] == [
        "'step 0: tool calculator'",
        "'step 1: tool word_count'",
        "'step 2: answer'",
    ]
    assert [task["root_id"] for task in steps] == [run.id] * 3
    assert [task["parent_id"] for task in steps] == [None, run.id, f"{run.id}:1"]
    assert [task["children"] for task in steps] == [[f"{run.id}:1"], [f"{run.id}:2"], []]
    for step, task in enumerate(steps[1:], 1):
        assert task["kwargs"].startswith("{'agent': 'research'")
        assert f"'run_id': '{run.id}'" in task["kwargs"] and f"'step': {step}" in task["kwargs"]
    # Flower's filter by task name lists an agent type's steps.
    assert set(ids) <= set(flower.get("/api/tasks?taskname=research").json())
    assert not flower.get("/api/tasks?taskname=coder").json()

    # The task list page: its columns, and the rows its script fetches.
    page = flower.get("/tasks").text
    columns = re.findall(r'<th data-column="(\w+)">', page)
    assert columns[:4] == ["name", "uuid", "state", "result"], columns
    table = flower.get(
        "/tasks/datatable?draw=1&start=0&length=100&order[0][column]=0"
        "&columns[0][data]=received&order[0][dir]=asc"
    ).json()
    rows = {row["uuid"]: row for row in table["data"]}
    assert [rows[task_id]["name"] for task_id in ids] == ["research"] * 3
    assert rows[f"{run.id}:1"]["result"] == "'step 1: tool word_count'"
    # A step's page links to the run's first step and to the step before.
    last = flower.get(f"/task/{run.id}:2").text
    assert f'title="{run.id}"' in last and f'title="{run.id}:1"' in last
    assert 'task="research"' in flower.get("/metrics", auth=None).text  # per agent type


def test_flower_masks_secrets_in_a_runs_input(
    celery_app, start_worker, start_flower, tmp_path
) -> None:
    start_worker(["research"], env={"AGENTQ_WORKER__TASK_EVENTS": "true"})
    flower = start_flower()
    run_input = {
        # A tool call first, so the answer is the tool's result and does not echo the input.
        "question": f"[tool:calculator] call the API with Authorization: Bearer {SECRET}",
        "account": {"api_key": SECRET, "user": "alice"},
        "notes": "x" * 500,
    }
    run = submit("research", run_input, celery=celery_app)
    run.get(timeout=60)

    task = wait_for_task(flower, run.id)
    kwargs = task["kwargs"]
    assert "'api_key': '********'" in kwargs and "'user': 'alice'" in kwargs
    assert "Authorization: ********" in kwargs
    assert "…(+300 chars)" in kwargs  # long text cut
    for path in ("/api/tasks", f"/api/task/info/{run.id}", f"/api/task/info/{run.id}:1"):
        assert SECRET.lower() not in flower.get(path).text.lower()
    assert SECRET not in flower.log_path.read_text()
    assert PASSWORD not in flower.log_path.read_text()
    for line in flower.log_path.read_text().splitlines():  # AGENTQ_LOG_FORMAT=json
        assert isinstance(json.loads(line), dict), line


def test_flower_turns_on_task_events_of_workers_started_without_them(
    celery_app, start_worker, start_flower
) -> None:
    start_worker(["research"])  # AGENTQ_WORKER__TASK_EVENTS unset: off
    flower = start_flower()
    # Flower broadcasts enable_events every 5 s; runs before the first broadcast stay unseen.
    started = time.monotonic()
    for i in range(40):
        run = submit("research", f"question {i}", celery=celery_app)
        assert run.get(timeout=60) == f"Answer: QUESTION {i}"
        if task_seen(flower, run.id):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("flower never saw a run of a worker started without task events")
    print(f"first run seen by flower {time.monotonic() - started:.1f} s after it started")


def test_flower_refuses_to_start_without_credentials(settings: Settings, tmp_path) -> None:
    port = free_port()
    for extra in ({}, {"AGENTQ_FLOWER__BASIC_AUTH": "only-a-password"}):
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "flower"],
            env=flower_env(settings, port, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0
        assert "AGENTQ_FLOWER__BASIC_AUTH" in out.stderr
        assert "only-a-password" not in out.stderr + out.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2)


def test_flower_credentials_stay_off_the_command_line(start_flower) -> None:
    flower = start_flower(workers=False)
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().decode()
    assert PASSWORD not in cmdline and "BASIC_AUTH" not in cmdline
