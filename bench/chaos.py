"""Chaos at scale: ``agentq bench chaos`` (issue 23; not part of ``bench all``).

Thousands of four-step runs (three calls of the ``ledger`` tool, then the answer) go through
several workers on Redis under Sentinel (a master and a replica with ``appendfsync
everysec``, two sentinels) and a PostgreSQL cluster of the bench's own, while faults hit them
one at a time: worker SIGKILLs and SIGTERMs, the master killed with ``kill -9`` and restarted
on its append-only file, a ``FLUSHALL``, a Sentinel failover, PostgreSQL crashed
(``pg_ctl stop -m immediate``) and restarted, and a storm of SIGKILLs every few seconds at
the end. The producer keeps about two runs per worker thread unfinished, so a run waits on
its fault, not on a backlog.

After each fault the bench waits until every run that was unfinished when it struck has
committed a step or finished since (or ``settle_s`` passed) and reports that time. At the
end: runs lost (submitted and acknowledged, not succeeded), steps committed twice, tool
calls run twice (the ledger is a file outside Redis and SQL), and what recovery published
again (the workers' log lines).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import DurabilitySettings, Settings, TritonSettings, WorkerSettings
from app.local.postgres import PostgresCluster
from app.local.sentinel import SentinelGroup
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.memory.schema import runs as runs_table
from app.memory.schema import steps as steps_table
from app.producer.submit import submit_many
from bench.memory import start_triton

SEED = 20261203
# As bench/chaos_tools.py names them. That module declares an agent when imported, which
# replaces the default agent types of the importing process: only the workers (and the
# producer, through its settings' include) import it.
AGENT = "chaos"
LEDGER_ENV = "AGENTQ_BENCH_LEDGER"


@dataclass(frozen=True)
class ChaosPlan:
    """The bench's sizes and timings."""

    runs: int = 2000  # at least: the producer goes on until the last fault is over
    workers: int = 3
    concurrency: int = 16
    tool_steps: int = 3
    step_ms: int = 50  # each model call
    grace_s: float = 5.0  # recovery: a run not moving this long is looked at
    interval_s: float = 2.0  # recovery: time between a worker's passes
    visibility_timeout_s: int = 10  # a SIGKILLed worker's steps come back after it
    settle_s: float = 90.0  # longest wait for every run to move after a fault
    gap_s: float = 3.0  # quiet time between two faults
    storm_s: float = 20.0  # the SIGKILL storm at the end ...
    storm_every_s: float = 3.0  # ... one every this many seconds
    deadline_s: float = 900.0  # every run must have ended by then


QUICK = ChaosPlan(runs=500, workers=2, settle_s=60.0, storm_s=10.0)
FAULTS = (
    "worker_sigkill",
    "worker_sigterm",
    "redis_kill9",
    "flushall",
    "sentinel_failover",
    "postgres_restart",
    "worker_sigkill",
)


@dataclass
class FaultResult:
    """One fault: when it struck and how long until every run it caught moved again."""

    fault: str
    at_s: float
    unfinished: int  # runs submitted and not ended when it struck
    first_step_after_s: float | None = None  # the first step committed after it
    all_moving_s: float | None = None  # every one of them moved (None: not within settle_s)
    not_moving: int = 0  # of them, still not moved after settle_s
    note: str = ""


@dataclass
class Chaos:
    """The services, workers and producer of one bench run."""

    plan: ChaosPlan
    tmp: Path
    stack: ExitStack
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    workers: list[WorkerProcess] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_producer: threading.Event = field(default_factory=threading.Event)
    producer_errors: list[str] = field(default_factory=list)

    def setup(self) -> None:
        plan, tmp, stack = self.plan, self.tmp, self.stack
        # A master with a replica under two Sentinels, both servers with an append-only file
        # fsynced every second; a master down this long is failed over.
        self.group = SentinelGroup(
            appendonly=True, server_options=["--appendfsync", "everysec"], down_after_ms=5000
        )
        stack.callback(self.group.stop)
        self.group.start()
        self.pg = PostgresCluster()
        stack.callback(self.pg.cleanup)
        self.pg.start()
        migrate(self.pg.url)
        triton = start_triton(stack, tmp)
        self.ledger = tmp / "ledger.txt"
        self.settings = Settings(
            redis_url=self.group.url,
            database_url=self.pg.url,
            include=["bench.chaos_tools"],
            triton=TritonSettings(urls=[triton.grpc_url]),
            worker=WorkerSettings(
                concurrency=plan.concurrency,
                visibility_timeout_s=plan.visibility_timeout_s,
                step_timeout_s=plan.visibility_timeout_s,
                soft_shutdown_timeout_s=3,
                lease_retry_s=0.5,
                retry_backoff_max_s=2,
            ),
            durability=DurabilitySettings(
                recovery_grace_s=plan.grace_s, recovery_interval_s=plan.interval_s
            ),
        )
        from app.celery_ext.app import create_celery

        self.celery = create_celery(self.settings)
        stack.callback(self.celery.close)
        self.engine: Engine = create_engine(self.pg.url, pool_pre_ping=True)
        stack.callback(self.engine.dispose)
        for worker in [self.spawn() for _ in range(plan.workers)]:
            worker.wait_ready(self.celery, 120)

    def spawn(self) -> WorkerProcess:
        env = {
            LEDGER_ENV: str(self.ledger),
            "AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": str(self.plan.visibility_timeout_s),
            "AGENTQ_WORKER__STEP_TIMEOUT_S": str(self.plan.visibility_timeout_s),
            "AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S": "3",
            "AGENTQ_WORKER__LEASE_RETRY_S": "0.5",
            "AGENTQ_WORKER__RETRY_BACKOFF_MAX_S": "2",
            "AGENTQ_HEALTH__PORT": "0",
        }
        worker = WorkerProcess(
            self.settings, [AGENT], log_dir=self.tmp, concurrency=self.plan.concurrency,
            extra_env=env, include=["bench.chaos_tools"], cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        self.stack.callback(worker.stop, 10)
        self.workers.append(worker)
        return worker.spawn()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # ---- reading SQL (None while PostgreSQL is down) ----

    def states(self, run_ids: list[str]) -> dict[str, tuple[str, int]] | None:
        """run id -> (status, next step) of those of ``run_ids`` in ``runs``."""
        query = select(runs_table.c.id, runs_table.c.status, runs_table.c.next_step).where(
            runs_table.c.id.in_(bindparam("ids", expanding=True))
        )
        found: dict[str, tuple[str, int]] = {}
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(run_ids), 1000):
                    rows = conn.execute(query, {"ids": run_ids[start : start + 1000]}).all()
                    found.update({row.id: (str(row.status), int(row.next_step)) for row in rows})
        except SQLAlchemyError:
            return None
        return found

    def step_count(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                query = select(func.count()).select_from(steps_table)
                return int(conn.execute(query).scalar_one())
        except SQLAlchemyError:
            return None

    def unfinished(self) -> dict[str, tuple[str, int] | None] | None:
        """The submitted runs not ended: run id -> (status, next step), None if not stored."""
        with self.lock:
            ids = list(self.submitted)
        states = self.states(ids)
        if states is None:
            return None
        ended = {"succeeded", "failed"}
        return {i: states.get(i) for i in ids if states.get(i, ("", 0))[0] not in ended}

    # ---- the producer ----

    def produce(self) -> None:
        """Submit runs in small batches, keeping about two per worker thread unfinished, until
        the faults are over and at least ``plan.runs`` are in."""
        plan = self.plan
        tools = " ".join(f'[tool:ledger {{"key": "k{i}"}}]' for i in range(plan.tool_steps))
        text = f"keep {tools} [delay:{plan.step_ms}]"
        target = 2 * plan.workers * plan.concurrency
        while len(self.submitted) < plan.runs or not self.stop_producer.is_set():
            waiting = self.unfinished()
            if waiting is not None and len(waiting) >= target:
                time.sleep(0.2)
                continue
            count = 25
            try:
                results = submit_many([{"agent": AGENT, "input": text}] * count, celery=self.celery)
            except Exception as exc:  # Redis or SQL down: not accepted, try again
                self.producer_errors.append(f"{self.elapsed():.1f}s {type(exc).__name__}")
                time.sleep(0.5)
                continue
            with self.lock:
                self.submitted.extend(results.ids)
            time.sleep(0.05)

    # ---- faults ----

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def strike(self, fault: str) -> str:
        """Do ``fault``; a note of what was done."""
        match fault:
            case "worker_sigkill" | "worker_sigterm":
                victim = self.rng.choice(self.live_workers())
                (victim.kill if fault == "worker_sigkill" else victim.terminate)()
                self.spawn()  # as Kubernetes would, without waiting
                return f"{victim.node}, replaced"
            case "redis_kill9":
                master = self.group.server(self.group.master_port())
                master.kill()  # appendfsync everysec: up to a second of writes lost
                master.start()  # before the Sentinels call it down: the same master
                return "the master restarted on its append-only file"
            case "flushall":
                with self.group.server(self.group.master_port()).client() as client:
                    client.flushall()  # replicated: the replica loses everything too
                return "every key gone"
            case "sentinel_failover":
                old = self.group.master_port()
                new = self.group.failover()
                return f"master {old} -> {new}"
            case "postgres_restart":
                self.pg.restart("immediate")  # a crash: no shutdown checkpoint
                return "crashed and restarted"
        raise ValueError(fault)

    def measure(self, fault: str) -> FaultResult:
        """Strike ``fault`` and wait until every run it caught unfinished moved again."""
        before = self.unfinished() or {}
        steps_before = self.step_count() or 0
        at = time.monotonic()
        result = FaultResult(fault, round(self.elapsed(), 1), len(before))
        try:
            result.note = self.strike(fault)
        except Exception as exc:  # reported, and the bench goes on to the next fault
            result.note = f"the fault itself failed: {exc!r}"
        pending = dict(before)
        while pending and time.monotonic() - at < self.plan.settle_s:
            time.sleep(0.25)
            if result.first_step_after_s is None and (self.step_count() or 0) > steps_before:
                result.first_step_after_s = round(time.monotonic() - at, 2)
            states = self.states(list(pending))
            if states is None:
                continue
            for run_id, was in list(pending.items()):
                now = states.get(run_id)
                if now is not None and (was is None or now[0] != "running" or now[1] > was[1]):
                    del pending[run_id]
        if pending:
            result.not_moving = len(pending)
        else:
            result.all_moving_s = round(time.monotonic() - at, 2)
        return result

    def storm(self) -> int:
        """SIGKILL a random worker every ``storm_every_s`` for ``storm_s``; how many."""
        kills, until = 0, time.monotonic() + self.plan.storm_s
        while time.monotonic() < until:
            self.strike("worker_sigkill")
            kills += 1
            time.sleep(self.plan.storm_every_s)
        return kills

    def wait_all_ended(self) -> bool:
        deadline = self.started + self.plan.deadline_s
        while time.monotonic() < deadline:
            waiting = self.unfinished()
            if waiting == {}:
                return True
            time.sleep(1)
        return False

    # ---- the outcome ----

    def outcome(self) -> dict[str, Any]:
        ids = list(self.submitted)
        states = self.states(ids) or {}
        statuses = Counter(states.get(i, ("not stored", 0))[0] for i in ids)
        with self.engine.connect() as conn:
            query = select(steps_table.c.run_id, func.count()).group_by(steps_table.c.run_id)
            steps: dict[str, int] = {str(r): int(n) for r, n in conn.execute(query).all()}
        expected = self.plan.tool_steps + 1
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        calls = Counter(tuple(line.split()[:3]) for line in lines)
        logs = "".join(p.read_text(errors="replace") for p in self.tmp.glob(f"{AGENT}-*.log"))
        republished = sum(int(n) for n in re.findall(r"recovery: published (\d+)", logs))
        return {
            "runs_submitted": len(ids),
            "runs_succeeded": statuses.get("succeeded", 0),
            "runs_lost": len(ids) - statuses.get("succeeded", 0),
            "statuses": dict(statuses),
            "steps_committed": sum(steps.values()),
            "steps_committed_twice": sum(max(0, n - expected) for n in steps.values()),
            "runs_with_wrong_step_count": sum(
                1
                for i in ids
                if states.get(i, ("", 0))[0] == "succeeded" and steps.get(i) != expected
            ),
            "tool_calls_run": len(lines),
            "tool_calls_distinct": len(calls),
            "tool_calls_repeated": sum(n - 1 for n in calls.values() if n > 1),
            "tool_calls_expected": self.plan.tool_steps * len(ids),
            "messages_republished_by_recovery": republished,
            "producer_retries": len(self.producer_errors),
            "workers_started": len(self.workers),
        }


def run(plan: ChaosPlan, tmp: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The chaos bench's document."""
    with ExitStack() as stack:
        chaos = Chaos(plan, tmp, stack)
        chaos.setup()
        chaos.started = time.monotonic()
        producer = threading.Thread(target=chaos.produce, name="producer", daemon=True)
        producer.start()
        while len(chaos.submitted) < min(plan.runs, 4 * plan.workers * plan.concurrency):
            time.sleep(0.2)
        time.sleep(2)  # under way: steps in flight on every worker
        faults: list[FaultResult] = []
        for fault in FAULTS:
            result = chaos.measure(fault)
            faults.append(result)
            progress(
                f"{result.at_s:6.1f}s {fault}: {result.unfinished} runs unfinished, all moving "
                f"again after {result.all_moving_s} s ({result.note})"
            )
            time.sleep(plan.gap_s)
        kills = chaos.storm()
        progress(f"{chaos.elapsed():6.1f}s storm: {kills} SIGKILLs")
        chaos.stop_producer.set()
        producer.join(timeout=plan.deadline_s)
        ended = chaos.wait_all_ended()
        wall = chaos.elapsed()
        outcome = chaos.outcome()
    target_s = plan.grace_s + plan.interval_s
    return {
        "scenario": "chaos",
        "plan": asdict(plan),
        "all_ended": ended,
        "wall_s": round(wall, 1),
        "faults": [asdict(f) for f in faults],
        "storm_sigkills": kills,
        **outcome,
        "targets": {
            "runs_lost": {"value": outcome["runs_lost"], "target": 0},
            "steps_committed_twice": {"value": outcome["steps_committed_twice"], "target": 0},
            "moving_again_within_s": {
                "value": max((f.all_moving_s or float("inf")) for f in faults),
                "target": target_s,
                "note": "grace + one recovery interval, for the faults that lose messages; "
                "a SIGKILLed worker's steps come back after the visibility timeout instead",
            },
        },
    }


def main(quick: bool, runs: int | None, out_dir: str | None, console: Any) -> int:
    """``agentq bench chaos``: run, print the table, write chaos.json."""
    import tempfile

    from rich.table import Table

    plan = QUICK if quick else ChaosPlan()
    if runs is not None:
        plan = replace(plan, runs=runs)
    out = Path(out_dir) if out_dir else Path(__file__).parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentq-chaos-") as tmp:
        doc = run(plan, Path(tmp), lambda line: console.print(line, highlight=False))
    (out / "chaos.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = Table("fault", "at", "runs caught", "first step after", "all moving again after")
    for f in doc["faults"]:
        moving = (
            f"{f['all_moving_s']} s"
            if f["all_moving_s"] is not None
            else (f"{f['not_moving']} not moving after {plan.settle_s:.0f} s")
        )
        first = f["first_step_after_s"]
        table.add_row(
            f["fault"], f"{f['at_s']} s", str(f["unfinished"]),
            "-" if first is None else f"{first} s", moving,
        )  # fmt: skip
    console.print(table)
    console.print(
        f"runs: {doc['runs_submitted']} submitted, {doc['runs_succeeded']} succeeded, "
        f"{doc['runs_lost']} lost; steps committed twice: {doc['steps_committed_twice']}; "
        f"tool calls run twice: {doc['tool_calls_repeated']} of {doc['tool_calls_run']}; "
        f"messages recovery published again: {doc['messages_republished_by_recovery']}; "
        f"{doc['storm_sigkills']} SIGKILLs in the storm; {doc['wall_s']} s; "
        f"results in {out / 'chaos.json'}",
        highlight=False,
    )
    ok = doc["all_ended"] and doc["runs_lost"] == 0 and doc["steps_committed_twice"] == 0
    return 0 if ok else 1
