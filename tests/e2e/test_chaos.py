"""Chaos: 500 multi-step runs while workers are SIGKILLed and SIGTERMed and Redis is killed.

Every run must complete exactly once: each of its steps committed once, each tool's side
effect recorded once, its result readable, nothing dead-lettered, and no message left in Redis.
Run with ``-s`` to see what the chaos did and the summary line with the counts.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from app.celery_ext.backlog import priority_lists
from app.config import Settings, TritonSettings, WorkerSettings
from app.constants import kv_key, lease_key
from app.local.processes import free_port, log_tail, stop_process, wait_until
from app.local.redis import find_redis_server
from app.local.workers import WorkerProcess
from app.memory.schema import runs as runs_table
from app.memory.schema import steps as steps_table
from app.memory.sessions import SessionStore
from app.producer.submit import submit_many
from app.tasks import dead_letters as dlq
from tests.fixtures import steps as recorded

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

RUNS = 500
TOOL_STEPS = 3  # counter_incr steps per run, then the final answer
STEPS = RUNS * (TOOL_STEPS + 1)
STEP_MS = 20  # each model call: short, so the workers take many messages a second
WORKERS = 3
CONCURRENCY = 16
SEED = 20240605
CHAOS_UNTIL = 0.9  # kill workers until this share of the steps is committed
SIGNALS_UNTIL = 0.7  # the planned signals fall before this share (a ready victim may lag)
POLL_S = 0.1  # how often the chaos thread reads the progress
STALL_S = 90  # no step committed for this long: a run is stuck (its time is not asserted)

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
    "AGENTQ_WORKER__LOG_EACH_STEP": "true",  # one "received" line per delivery, counted below
    "AGENTQ_HEALTH__PORT": "0",
    # Recovery looks soon: a run that stalls on a message gone with the crash moves again.
    "AGENTQ_DURABILITY__RECOVERY_GRACE_S": "5",
    "AGENTQ_DURABILITY__RECOVERY_INTERVAL_S": "2",
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
            except redis.ConnectionError:  # refused, or still loading its append-only file
                return False

        try:
            if not wait_until(answers, 30, self.proc):
                log = log_tail(self.folder / "redis.log")
                raise AssertionError(f"redis-server did not start:\n{log}")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM by PID: Redis flushes its append-only file and exits."""
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL by PID: a crash; with appendfsync always every acknowledged write is kept."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def chaos_redis(tmp_path: Path):
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PersistentRedis(folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(chaos_redis: PersistentRedis):
    client = redis.Redis.from_url(chaos_redis.url)
    yield client
    client.close()


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
    from app.celery_ext.app import create_celery

    app = create_celery(chaos_settings)
    yield app
    app.close()


@pytest.fixture
def chaos_store(chaos_settings: Settings):
    store = SessionStore.from_url(chaos_settings.database_url, migrate=True)
    yield store
    store.close()


@pytest.fixture
def workers():
    """Every worker process the test starts; each one stopped by its PID at the end."""
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
        runs.append({"agent": "coder", "input": f"count {tools} [delay:{STEP_MS}]"})
    return runs


class Chaos:
    """At random points of the run's progress, SIGKILLs or SIGTERMs a random worker and
    starts a replacement; once, kills Redis (SIGKILL) and starts it again on the same port and
    folder (appendfsync always: nothing acknowledged is lost).

    The points are shares of the steps committed, not moments: however fast the workers
    are, every planned signal lands while steps are still running."""

    def __init__(
        self,
        rng: random.Random,
        settings: Settings,
        workers: list[WorkerProcess],
        server: PersistentRedis,
        log_dir: Path,
        progress: Callable[[], float],
    ) -> None:
        self.rng = rng
        self.settings = settings
        self.workers = workers
        self.server = server
        self.log_dir = log_dir
        self.progress = progress  # share of the steps committed, 0..1
        self.restart_at = rng.uniform(0.2, 0.5)  # progress at which Redis restarts
        # Progress at which each signal is sent: two of each kind, in random order.
        kinds = [signal.SIGKILL, signal.SIGTERM] * 2
        rng.shuffle(kinds)
        points = sorted(rng.uniform(0.05, SIGNALS_UNTIL) for _ in kinds)
        self.plan: list[tuple[float, signal.Signals]] = list(zip(points, kinds, strict=True))
        self.stop_event = threading.Event()
        self.kills: Counter[str] = Counter()
        self.signalled: dict[int, signal.Signals] = {}  # worker pid -> what it was sent
        self.redis_restarts = 0
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        if self.error is not None:
            raise self.error

    def log(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s {text}"
        self.events.append(line)
        print(f"chaos: {line}", flush=True)

    def spawn(self) -> WorkerProcess:
        worker = WorkerProcess(
            self.settings, ["coder"], log_dir=self.log_dir, concurrency=CONCURRENCY,
            extra_env=WORKER_ENV,
        )  # fmt: skip
        self.workers.append(worker)
        return worker.spawn()

    def _run(self) -> None:
        try:
            while not self.stop_event.wait(POLL_S):
                done = self.progress()
                if done >= CHAOS_UNTIL:
                    return
                if not self.redis_restarts and done >= self.restart_at:
                    self.restart_redis(done)
                    continue
                if not self.plan or done < self.plan[0][0]:
                    continue
                # Busy workers, not ones still starting: a kill should cut steps mid-way.
                ready = [w for w in self.workers if w.pid not in self.signalled and is_ready(w)]
                if not ready:
                    continue
                victim = self.rng.choice(ready)
                _, sig = self.plan.pop(0)
                self.signalled[victim.pid] = sig
                if sig == signal.SIGKILL:
                    victim.kill()
                else:
                    victim.terminate()  # it finishes or hands back its steps, then exits
                self.kills[sig.name] += 1
                replacement = self.spawn()  # as Kubernetes would, without waiting
                self.log(
                    f"{sig.name} {victim.node} (pid {victim.pid}) at {done:.0%} of the steps; "
                    f"started {replacement.node}"
                )
        except BaseException as exc:  # raised by stop(), not lost in the thread
            self.error = exc

    def restart_redis(self, done: float) -> None:
        self.log(f"killing Redis (SIGKILL) at {done:.0%} of the steps")
        self.server.kill()
        down = self.rng.uniform(1.0, 2.0)
        time.sleep(down)
        self.server.start()
        self.redis_restarts += 1
        self.log(f"Redis back on port {self.server.port} after {down:.1f} s down")


def is_ready(worker: WorkerProcess) -> bool:
    if worker.proc is None or worker.proc.poll() is not None:
        return False
    return worker.log_path.exists() and " ready." in worker.log_path.read_text(errors="replace")


def count_steps(store: SessionStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(steps_table)).scalar_one())


def count_finished(store: SessionStore) -> int:
    with store.engine.connect() as conn:
        query = select(func.count()).where(runs_table.c.status != "running")
        return int(conn.execute(query).scalar_one())


def wait_for_runs(store: SessionStore) -> bool:
    """Wait until every run has ended; False once no step was committed for STALL_S."""
    last, last_change = -1, time.monotonic()
    while count_finished(store) < RUNS:
        steps = count_steps(store)
        if steps != last:
            last, last_change = steps, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return False
        time.sleep(0.5)
    return True


def leftovers(client: redis.Redis) -> dict[str, int]:
    """Messages still in Redis: the queue with its priority sub-lists, and unacked ones."""
    found = {name: client.llen(name) for name in priority_lists("agent.coder")}
    found["unacked"] = client.hlen("unacked")
    found["unacked_index"] = client.zcard("unacked_index")
    return {name: int(n) for name, n in found.items() if n}


def redis_keys(client: redis.Redis) -> dict[str, str]:
    """Every key but the per-run ones, with its type (a message routed elsewhere shows here)."""
    per_run = ("celery-task-meta-", "agentq:")
    names = sorted(k.decode() for k in client.scan_iter(count=1000))
    return {k: client.type(k).decode() for k in names if not k.startswith(per_run)}


def worker_logs(log_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in log_dir.glob("coder-*.log"))


def test_runs_complete_exactly_once_through_worker_kills_and_a_redis_restart(
    chaos_redis, chaos_settings, chaos_celery, chaos_store, client, workers, tmp_path
):
    chaos = Chaos(
        random.Random(SEED), chaos_settings, workers, chaos_redis, tmp_path,
        lambda: count_steps(chaos_store) / STEPS,
    )  # fmt: skip
    for worker in [chaos.spawn() for _ in range(WORKERS)]:
        worker.wait_ready(chaos_celery)
    results = submit_many(chaos_runs(), celery=chaos_celery)
    chaos.start()
    finished = wait_for_runs(chaos_store)
    chaos.stop()
    runs_s = time.monotonic() - chaos.started
    if not finished:
        stuck = [
            (r.id, state and state.next_step, client.get(lease_key(r.id)))
            for r in results
            if (state := chaos_store.load_run(r.id)) is None or state.status == "running"
        ]
        logs = worker_logs(tmp_path).splitlines()
        traces = {run: [line for line in logs if run in line] for run, _, _ in stuck[:3]}
        raise AssertionError(
            f"{len(stuck)} runs stuck, e.g. (run, next step, lease) {stuck[:5]}; "
            f"in Redis: {leftovers(client)}, restore lock TTL {client.ttl('unacked_mutex')}, "
            f"keys {redis_keys(client)}; chaos: {chaos.events}; their log lines: {traces}"
        )

    # Every run succeeded once: its steps committed once each, in order, with the answer.
    wrong = []
    for result in results:
        run = chaos_store.load_run(result.id)
        seen = (
            run.status,
            run.answer,
            run.next_step,
            [(s.step, s.kind, recorded.result(s)) for s in run.steps],
        )
        expected = (
            "succeeded",
            "Answer: 1",
            TOOL_STEPS + 1,
            [(i, "tool", 1) for i in range(TOOL_STEPS)] + [(TOOL_STEPS, "final", None)],
        )
        if seen != expected:
            wrong.append((result.id, run.error, seen))
    assert not wrong, f"{len(wrong)} runs wrong, e.g. {wrong[:3]}"
    assert count_steps(chaos_store) == STEPS

    # No side effect recorded twice (nor lost): every counter is exactly 1.
    keys = [kv_key(f"chaos-r{r}-s{i}") for r in range(RUNS) for i in range(TOOL_STEPS)]
    assert Counter(client.mget(keys)) == {b"1": len(keys)}

    assert dlq.count(client) == 0, [letter.reason for letter in dlq.list_letters(client, 5)]

    # Each run's result reads as its answer: the result backend lived through it too.
    outcomes = Counter((r.state, r.result) for r in results)
    assert outcomes == {("SUCCESS", "Answer: 1"): RUNS}, outcomes.most_common(5)

    # Duplicates (redelivered, handed back, retried messages) drain: nothing is left in Redis.
    drained = wait_until(lambda: not leftovers(client), 6 * WORKER.visibility_timeout_s)
    assert drained, leftovers(client)

    logs = worker_logs(tmp_path)
    deliveries = logs.count("] received")
    handed_back = sum(int(n) for n in re.findall(r"handed back (\d+) step", logs))
    print(
        f"\nchaos summary: runs={RUNS} succeeded={RUNS} steps={STEPS} "
        f"SIGKILL={chaos.kills['SIGKILL']} SIGTERM={chaos.kills['SIGTERM']} "
        f"redis_restarts={chaos.redis_restarts} workers_started={len(workers)} "
        f"deliveries={deliveries} (beyond one per step: {deliveries - STEPS}) "
        f"handed_back_at_deadline={handed_back} runs_wall_s={runs_s:.1f}",
        flush=True,
    )
    # No worker died but those killed; each one told to stop did so cleanly.
    for worker in workers:
        sent = chaos.signalled.get(worker.pid)
        if sent is None:
            assert worker.proc.poll() is None, f"{worker.node} died:\n{log_tail(worker.log_path)}"
        elif sent == signal.SIGTERM:
            assert worker.proc.wait(timeout=30) == 0, log_tail(worker.log_path)
    assert chaos.redis_restarts == 1
    assert chaos.kills["SIGKILL"] and chaos.kills["SIGTERM"]
