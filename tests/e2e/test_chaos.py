"""Chaos: 500 multi-step runs while workers are SIGKILLed and SIGTERMed and Redis restarts.

Every run must complete exactly once: each of its steps committed once, each tool's side
effect recorded once, nothing dead-lettered, and no message left behind in Redis.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from app import dlq
from app.config import Settings, TritonSettings, WorkerSettings
from app.constants import kv_key, lease_key, queue_for
from app.local.processes import free_port, log_tail, stop_process, wait_until
from app.local.redis import find_redis_server
from app.local.workers import WorkerProcess
from app.memory.schema import runs as runs_table
from app.memory.schema import steps as steps_table
from app.memory.sessions import SessionStore
from app.producer import submit_many

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

RUNS = 500
TOOL_STEPS = 3  # counter_incr steps per run, then the final answer
WORKERS = 3
CONCURRENCY = 16
SEED = 20240605
FINISH_DEADLINE_S = 150  # generous: a stuck run fails the test; its time is not asserted
CHAOS_UNTIL = 0.9  # keep killing workers until this share of the runs has succeeded

# A step's message comes back soon after a SIGKILL (visibility timeout) and the dead worker's
# lease expires as soon (step timeout); a SIGTERMed worker hands its steps back after 3 s.
WORKER = WorkerSettings(
    concurrency=CONCURRENCY,
    visibility_timeout_s=5,
    step_timeout_s=5,
    soft_shutdown_timeout_s=3,
    lease_retry_s=0.5,
    retry_backoff_max_s=2,
)
WORKER_ENV = {
    "AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": str(WORKER.visibility_timeout_s),
    "AGENTQ_WORKER__STEP_TIMEOUT_S": str(WORKER.step_timeout_s),
    "AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S": str(WORKER.soft_shutdown_timeout_s),
    "AGENTQ_WORKER__LEASE_RETRY_S": str(WORKER.lease_retry_s),
    "AGENTQ_WORKER__RETRY_BACKOFF_MAX_S": str(WORKER.retry_backoff_max_s),
    "AGENTQ_HEALTH__PORT": "0",
    "AGENTQ_WORKER__LOG_EACH_STEP": "true",
}


class PersistentRedis:
    """redis-server with an fsync-always append-only file in ``folder``, restartable in place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            str(find_redis_server()), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--logfile", str(self.folder / "redis.log"), "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.BusyLoadingError:
                return False
            except redis.ConnectionError:
                return False

        try:
            if not wait_until(answers, 30, self.proc):
                raise AssertionError(
                    f"redis-server did not start:\n{log_tail(self.folder / 'redis.log')}"
                )
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def chaos_redis(tmp_path: Path):
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PersistentRedis(folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def chaos_settings(chaos_redis: PersistentRedis, tmp_path: Path, triton_server) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=chaos_redis.url,
        database_url=f"sqlite:///{tmp_path / 'chaos.sqlite3'}",
        triton=TritonSettings(urls=[triton_server.grpc_url]),
        worker=WORKER,
    )


@pytest.fixture
def chaos_celery(chaos_settings: Settings):
    from app.celery_app import create_celery

    app = create_celery(chaos_settings)
    yield app
    app.close()


@pytest.fixture
def chaos_store(chaos_settings: Settings):
    store = SessionStore.from_url(chaos_settings.database_url, migrate=True)
    yield store
    store.close()


@pytest.fixture
def workers(chaos_settings: Settings, tmp_path: Path):
    """Every worker process the test starts; each stopped by PID at the end."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop(timeout_s=10)


def chaos_runs() -> list[dict]:
    runs = []
    for r in range(RUNS):
        tools = " ".join(
            f'[tool:counter_incr {{"key": "chaos-r{r}-s{i}"}}]' for i in range(TOOL_STEPS)
        )
        runs.append({"agent": "coder", "input": f"count {tools} [delay:20]"})
    return runs


class Chaos:
    """Kills (SIGKILL or SIGTERM) a random worker at random moments and starts a replacement;
    once, stops Redis and starts it again on the same port and folder."""

    def __init__(
        self,
        rng: random.Random,
        settings: Settings,
        workers: list[WorkerProcess],
        server: PersistentRedis,
        log_dir: Path,
        progress: callable,
    ) -> None:
        self.rng = rng
        self.settings = settings
        self.workers = workers
        self.server = server
        self.log_dir = log_dir
        self.progress = progress  # share of runs succeeded, 0..1
        self.stop_event = threading.Event()
        self.kills: Counter[str] = Counter()
        self.redis_restarts = 0
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.restart_at = rng.uniform(0.2, 0.5)  # progress at which Redis restarts
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def log(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s {text}"
        self.events.append(line)
        print(f"chaos: {line}", flush=True)

    def spawn(self) -> WorkerProcess:
        worker = WorkerProcess(
            self.settings,
            ["coder"],
            log_dir=self.log_dir,
            concurrency=CONCURRENCY,
            extra_env=WORKER_ENV,
        )
        self.workers.append(worker)
        return worker.spawn()

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def _run(self) -> None:
        terminating: set[int] = set()
        try:
            while not self.stop_event.wait(self.rng.uniform(2.0, 5.0)):
                done = self.progress()
                if done >= CHAOS_UNTIL:
                    return
                if not self.redis_restarts and done >= self.restart_at:
                    self.restart_redis()
                    continue
                candidates = [w for w in self.live() if w.pid not in terminating]
                victim = self.rng.choice(candidates)
                sig = self.rng.choice([signal.SIGKILL, signal.SIGTERM])
                if sig == signal.SIGKILL:
                    victim.kill()
                else:
                    victim.terminate()  # it finishes or hands back its steps, then exits
                    terminating.add(victim.pid)
                self.kills[sig.name] += 1
                replacement = self.spawn()
                self.log(
                    f"{sig.name} {victim.node} (pid {victim.pid}) at {done:.0%} of runs; "
                    f"started {replacement.node}"
                )
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def restart_redis(self) -> None:
        self.log("stopping Redis (SIGTERM)")
        self.server.stop()
        pause = self.rng.uniform(1.0, 2.0)
        time.sleep(pause)
        self.server.start()
        self.redis_restarts += 1
        self.log(f"Redis back on port {self.server.port} after {pause:.1f} s down")


def count_by_status(store: SessionStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(runs_table.c.status, func.count()).group_by(runs_table.c.status)
        ).all()
    return {status: int(n) for status, n in rows}


def count_steps(store: SessionStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(steps_table)).scalar_one())


def leftovers(client: redis.Redis) -> dict[str, int]:
    """Messages still in Redis: the queue with its priority sub-lists, and unacked ones."""
    queue = queue_for("coder")
    lists = [queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9))]
    found = {name: int(client.llen(name)) for name in lists}
    found["unacked"] = int(client.hlen("unacked"))
    found["unacked_index"] = int(client.zcard("unacked_index"))
    return {name: n for name, n in found.items() if n}


def test_runs_complete_exactly_once_through_worker_kills_and_a_redis_restart(
    chaos_redis, chaos_settings, chaos_celery, chaos_store, workers, tmp_path
):
    rng = random.Random(SEED)
    client = redis.Redis.from_url(chaos_redis.url)
    started = time.monotonic()

    def succeeded_share() -> float:
        return count_by_status(chaos_store).get("succeeded", 0) / RUNS

    chaos = Chaos(rng, chaos_settings, workers, chaos_redis, tmp_path, succeeded_share)
    first = [chaos.spawn() for _ in range(WORKERS)]
    for worker in first:
        worker.wait_ready(chaos_celery)
    results = submit_many(chaos_runs(), celery=chaos_celery)
    run_ids = [r.id for r in results]
    chaos.started = time.monotonic()
    chaos.thread.start()

    def all_finished() -> bool:
        counts = count_by_status(chaos_store)
        return counts.get("succeeded", 0) + counts.get("failed", 0) == RUNS

    finished = wait_until(all_finished, FINISH_DEADLINE_S)
    chaos.stop_event.set()
    chaos.thread.join(timeout=30)
    run_wall_s = time.monotonic() - chaos.started
    if chaos.error is not None:
        raise chaos.error
    if not finished:
        pending = [
            (run_id, state.next_step if state else None, client.get(lease_key(run_id)))
            for run_id in run_ids
            if (state := chaos_store.load_run(run_id)) is None or state.status != "succeeded"
        ]
        raise AssertionError(
            f"{len(pending)} runs unfinished after {FINISH_DEADLINE_S} s "
            f"(first: {pending[:5]}); in Redis: {leftovers(client)}; "
            f"chaos: {chaos.events}"
        )

    # Every run succeeded once: each step committed once, in order, with the expected answer.
    bad = []
    for i, run_id in enumerate(run_ids):
        run = chaos_store.load_run(run_id)
        steps = [s.step for s in run.steps]
        kinds = [s.kind for s in run.steps]
        expected_kinds = ["tool"] * TOOL_STEPS + ["final"]
        if (
            run.status != "succeeded"
            or run.answer != "Answer: 1"
            or steps != list(range(TOOL_STEPS + 1))
            or kinds != expected_kinds
            or run.next_step != TOOL_STEPS + 1
            or [s.tool_result for s in run.steps[:TOOL_STEPS]] != [1] * TOOL_STEPS
        ):
            bad.append((i, run_id, run.status, run.answer, run.error, steps, run.next_step))
    assert not bad, f"{len(bad)} runs wrong, e.g. {bad[:5]}"
    assert count_steps(chaos_store) == RUNS * (TOOL_STEPS + 1)

    # No side effect recorded twice (nor lost): every counter is exactly 1.
    keys = [kv_key(f"chaos-r{r}-s{i}") for r in range(RUNS) for i in range(TOOL_STEPS)]
    values = Counter(client.mget(keys))
    assert values == {b"1": len(keys)}, values

    assert dlq.count(client) == 0, [letter.reason for letter in dlq.list_letters(client, 5)]

    # The run's result resolves to its answer too (the result backend lived through it all).
    states = Counter((r.state, r.result) for r in results)
    assert states == {("SUCCESS", "Answer: 1"): RUNS}, states.most_common(5)

    # Duplicates (redelivered, handed back, retried) drain: nothing is left in Redis.
    drained = wait_until(lambda: not leftovers(client), 6 * WORKER.visibility_timeout_s)
    assert drained, leftovers(client)
    wall_s = time.monotonic() - started
    redelivered = sum(
        log.read_text(errors="replace").count("handed back") for log in tmp_path.glob("*.log")
    )
    print(
        f"\nchaos summary: runs={RUNS} succeeded={RUNS} steps={count_steps(chaos_store)} "
        f"SIGKILL={chaos.kills['SIGKILL']} SIGTERM={chaos.kills['SIGTERM']} "
        f"redis_restarts={chaos.redis_restarts} workers_started={len(workers)} "
        f"handback_logs={redelivered} runs_wall_s={run_wall_s:.1f} total_wall_s={wall_s:.1f}",
        flush=True,
    )
    assert chaos.redis_restarts == 1
    assert chaos.kills["SIGKILL"] and chaos.kills["SIGTERM"]
    client.close()
