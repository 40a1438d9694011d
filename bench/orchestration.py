"""Orchestration: what parked runs cost a worker, and how fast a fan-in hands a parent on.

``agentq bench orchestration`` runs two benches against one Redis and Triton on CPU (the
scripted model), with SQLite and, when it answers, PostgreSQL:

``parked``
    One ``agentq worker`` process (threads, ``-c 4``) drains trivial runs (the dispatch
    bench's echo agent) against a store with nothing parked (a) and against a store holding
    ``parked`` runs waiting for a signal (b), a/b/a/b, a fresh worker each round; the median
    rate of each, ratio b/a, the worker's CPU per run and its RSS after the drain. The parked
    runs are made as a user's would be: submitted runs of an agent whose first step calls
    ``wait_for_signal`` (its model call on Triton), drained by a worker until the store shows
    every one ``waiting``. Then each gets its signal (``app.producer.control.signal``, one
    after the other from this process, no worker running: signals/s), and a worker finishes
    them all.

``fan_out``
    An orchestrator run delegates ``children`` tasks (one ``delegate`` call) to a trivial
    child agent (echo); a worker process per agent type. The fan-in latency is from the last
    child's end (its step's ``created_at``, the commit that ends it) to the parent's step 1
    model call start (that step's ``created_at`` minus its ``latency_ms``: the step timer
    starts just before the model call, in the same process as its ``created_at``). The
    baseline, taking turns with it: a client runs the plan as an orchestrator run of its own
    (no delegate call), submits the same children with ``submit_many``, waits on every
    AsyncResult and submits the continuation run; its fan-in is from the last child's end to
    the continuation's model call start, measured the same way. The whole fan-out (submit to
    the answer, at the client) is reported for both.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from app.celery_ext.context import context_of
from app.config import REPO_ROOT, Settings
from app.errors import AgentqError
from app.local.workers import WorkerProcess
from app.memory.records import RunStatus
from app.memory.schema import run_children, runs, steps
from app.memory.sessions import SessionStore
from app.producer.control import signal
from app.producer.submit import submit, submit_many
from bench.dispatch import DrainError, drain, fill_agentq
from bench.measure import BenchError
from bench.memory import start_triton
from bench.report import environment, latency_summary, ratio, scenario, target, write
from bench.services import (
    AGENTS_YAML,
    POSTGRES_URL,
    TRIVIAL,
    FlaggedWorkerProcess,
    Services,
    postgres_problem,
    postgres_schema,
    rss_mib,
)

PARKER = "parker"  # triton: its first step calls wait_for_signal
ORCHESTRATOR = "orchestrator"  # triton: its first step delegates, its second answers
CHILD = "child"  # echo: one step, no model call
# Room for a delegate call of 100 tasks and an answer quoting 100 results (whitespace tokens).
AGENTS = (
    AGENTS_YAML
    + f"""  - name: {PARKER}
    tools: [wait_for_signal]
    max_steps: 3
  - name: {ORCHESTRATOR}
    tools: [delegate]
    max_steps: 3
    max_tokens: 4096
  - name: {CHILD}
    backend: echo
    max_steps: 2
"""
)
SIGNAL = "go"
PARK_INPUT = f'park [tool:wait_for_signal {{"name":"{SIGNAL}"}}]'
TARGET_PARKED_RATIO = 0.95  # dispatch with the runs parked within 5% of with none
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
POLL_S = 0.2


@dataclass(frozen=True)
class Plan:
    """How much each bench does."""

    parked: int = 10_000
    dispatch_runs: int = 2_000  # trivial runs per round
    rounds: int = 3  # a/b pairs
    concurrency: int = 4  # the measured worker's threads
    park_concurrency: int = 8  # threads of the worker that parks (and resumes) the runs
    children: int = 100
    repeats: int = 20
    fan_concurrency: int = 8  # threads of the worker serving the parent and its children
    postgres_url: str | None = POSTGRES_URL
    benches: tuple[str, ...] = ("parked", "fan_out")


QUICK = Plan(parked=2_000, dispatch_runs=1_000, rounds=1, children=50, repeats=5)


# ---- helpers ----


def _settings(services: Services, database_url: str, triton_url: str) -> Settings:
    agents_file = services.tmp / "orchestration-agents.yaml"
    if not agents_file.exists():
        agents_file.write_text(AGENTS)
    return services.settings(database_url, triton_url).model_copy(
        update={"agents_file": agents_file}
    )


def _worker(
    services: Services, settings: Settings, agents: list[str], stack: ExitStack, concurrency: int
) -> WorkerProcess:
    worker = FlaggedWorkerProcess(settings, agents, log_dir=services.tmp, concurrency=concurrency)
    stack.callback(worker.stop)
    return worker.spawn()


def _store(celery: Celery) -> SessionStore:
    store: SessionStore = context_of(celery).store
    return store


def count_runs(store: SessionStore, agent: str, status: RunStatus) -> int:
    """How many runs of ``agent`` the store holds in ``status``."""
    query = select(func.count()).where(runs.c.agent == agent, runs.c.status == status)
    return int(store.read(lambda conn: conn.execute(query).scalar_one()))


def _wait_count(
    store: SessionStore, agent: str, status: RunStatus, count: int, timeout_s: float, log: Path
) -> None:
    end = time.monotonic() + timeout_s
    while (seen := count_runs(store, agent, status)) < count:
        if time.monotonic() > end:
            raise DrainError(f"{seen} of {count} {agent} runs {status} after {timeout_s:.0f} s; "
                             f"log: {log}")  # fmt: skip
        time.sleep(POLL_S)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


# ---- parked runs cost nothing ----


def park_runs(services: Services, settings: Settings, plan: Plan) -> dict[str, Any]:
    """``plan.parked`` runs of PARKER submitted and run until each is ``waiting``."""
    services.flush()
    with ExitStack() as stack:
        celery = services.agentq(settings, stack)
        started = time.monotonic()
        for start in range(0, plan.parked, 1000):
            batch = min(1000, plan.parked - start)
            submit_many([{"agent": PARKER, "input": PARK_INPUT}] * batch, celery=celery)
        worker = _worker(services, settings, [PARKER], stack, plan.park_concurrency)
        store = _store(celery)
        _wait_count(store, PARKER, RunStatus.WAITING, plan.parked, 120 + plan.parked / 10,
                    worker.log_path)  # fmt: skip
        seconds = time.monotonic() - started
    return {
        "parked": plan.parked,
        "how": "submitted runs whose first step calls wait_for_signal, run by a worker "
        f"(c={plan.park_concurrency}) until all are waiting in the store",
        "seconds": round(seconds, 1),
        "runs_per_s": round(plan.parked / seconds, 1),
    }


def dispatch_round(
    services: Services, settings: Settings, runs_: int, concurrency: int
) -> dict[str, Any]:
    """The dispatch bench's drain of ``runs_`` trivial runs by a fresh worker, with its RSS
    once they are done."""
    with ExitStack() as stack:
        celery = services.agentq(settings, stack)
        spawned: list[WorkerProcess] = []

        def start() -> WorkerProcess:
            spawned.append(_worker(services, settings, [TRIVIAL], stack, concurrency))
            return spawned[0]

        figures = drain(
            services, stack, lambda: fill_agentq(celery, runs_), start, timeout_s=60 + runs_ / 20
        )
        rss = rss_mib(spawned[0].pid)
    return {**figures, "worker_rss_mib": round(rss, 1) if rss is not None else None}


def _summary(rounds: list[dict[str, Any]], parked: int) -> dict[str, Any]:
    keys = ("runs_per_s", "worker_cpu_ms_per_run", "worker_rss_mib")
    out: dict[str, Any] = {"parked": parked}
    out.update({k: _median([r[k] for r in rounds]) for k in keys})
    out["failed"] = sum(r["failed"] for r in rounds)
    out["runs"] = sum(r["runs"] for r in rounds)
    out["rounds"] = rounds
    return out


def signal_all(services: Services, settings: Settings, plan: Plan) -> dict[str, Any]:
    """Signal every parked run (one after the other, no worker running), then let a worker
    finish them; how long each part took and how many ended."""
    services.flush()
    with ExitStack() as stack:
        celery = services.agentq(settings, stack)
        store = _store(celery)
        query = select(runs.c.id).where(runs.c.agent == PARKER, runs.c.status == RunStatus.WAITING)
        ids = list(store.read(lambda conn: conn.execute(query).scalars().all()))
        started = time.monotonic()
        resumed = sum(signal(run_id, SIGNAL, {"n": i}, celery=celery).resumed
                      for i, run_id in enumerate(ids))  # fmt: skip
        signal_s = time.monotonic() - started
        worker = _worker(services, settings, [PARKER], stack, plan.park_concurrency)
        started = time.monotonic()
        _wait_count(store, PARKER, RunStatus.SUCCEEDED, len(ids), 120 + len(ids) / 10,
                    worker.log_path)  # fmt: skip
        finish_s = time.monotonic() - started
        not_succeeded = len(ids) - count_runs(store, PARKER, RunStatus.SUCCEEDED)
    return {
        "signalled": len(ids),
        "resumed": resumed,
        "signal_s": round(signal_s, 2),
        "signals_per_s": round(len(ids) / signal_s, 1) if signal_s > 0 else None,
        "finish_s": round(finish_s, 1),
        "finished": len(ids) - not_succeeded,
        "how": "app.producer.control.signal per run, one process, no worker running; then "
        f"a worker (c={plan.park_concurrency}) ran each resumed step",
    }


def parked_side(
    services: Services, triton_url: str, plan: Plan, idle_url: str, parked_url: str
) -> dict[str, Any]:
    """The parked bench on one store kind: ``idle_url`` stays empty of parked runs,
    ``parked_url`` gets ``plan.parked``."""
    idle = _settings(services, idle_url, triton_url)
    loaded = _settings(services, parked_url, triton_url)
    parking = park_runs(services, loaded, plan)
    a_rounds, b_rounds = [], []
    for _ in range(plan.rounds):
        a_rounds.append(dispatch_round(services, idle, plan.dispatch_runs, plan.concurrency))
        b_rounds.append(dispatch_round(services, loaded, plan.dispatch_runs, plan.concurrency))
    a, b = _summary(a_rounds, 0), _summary(b_rounds, plan.parked)
    worker = f"agentq worker, threads, c={plan.concurrency}, a fresh one per round"
    doc = scenario("parked", "runs_per_s", {"agentq": {**b, "worker": worker},
                                            "idle": {**a, "worker": worker}},
                   baseline="idle")  # fmt: skip
    doc["cpu_per_run_ratio"] = ratio(b["worker_cpu_ms_per_run"], a["worker_cpu_ms_per_run"])
    doc["rss_ratio"] = ratio(b["worker_rss_mib"], a["worker_rss_mib"])
    doc["targets"] = {"ratio": target(doc["ratio"], TARGET_PARKED_RATIO)}
    doc["parking"] = parking
    doc["signals"] = signal_all(services, loaded, plan)
    return doc


# ---- fan-out / fan-in ----


def delegate_input(children: int) -> str:
    """The orchestrator's input: one delegate call of ``children`` tasks (compact JSON: the
    scripted model counts whitespace-separated tokens)."""
    tasks = [{"agent": CHILD, "input": f"p{i}"} for i in range(children)]
    call = json.dumps({"tasks": tasks}, separators=(",", ":"))
    return f"plan [tool:delegate {call}]"


def _ended_at(store: SessionStore, run_ids: list[str]) -> datetime:
    """When the last of ``run_ids`` committed its last step."""
    query = select(func.max(steps.c.created_at)).where(steps.c.run_id.in_(run_ids))
    last: datetime = store.read(lambda conn: conn.execute(query).scalar_one())
    return last


def _call_started(store: SessionStore, run_id: str, step: int) -> float:
    """Unix time the model call of ``run_id``'s step ``step`` started."""
    query = select(steps.c.created_at, steps.c.latency_ms).where(
        steps.c.run_id == run_id, steps.c.step == step
    )
    row = store.read(lambda conn: conn.execute(query).one())
    return float(row.created_at.timestamp() - row.latency_ms / 1000)


def _statuses(store: SessionStore, run_ids: list[str]) -> dict[str, int]:
    query = (
        select(runs.c.status, func.count()).where(runs.c.id.in_(run_ids)).group_by(runs.c.status)
    )
    rows = store.read(lambda conn: conn.execute(query).all())
    return {str(status): int(n) for status, n in rows}


def agentq_fan_out(celery: Celery, children: int, timeout_s: float) -> dict[str, Any]:
    """One orchestrator run: fan-in seconds, whole seconds, its children's statuses."""
    store = _store(celery)
    started = time.time()
    result = submit(ORCHESTRATOR, delegate_input(children), celery=celery)
    result.get(timeout=timeout_s)
    whole = time.time() - started
    query = select(run_children.c.child_id).where(run_children.c.parent_id == result.id)
    ids = list(store.read(lambda conn: conn.execute(query).scalars().all()))
    fan_in = _call_started(store, result.id, 1) - _ended_at(store, ids).timestamp()
    statuses = _statuses(store, [*ids, result.id])
    return {"fan_in_s": fan_in, "whole_s": whole, "children": len(ids), "statuses": statuses}


def client_fan_out(celery: Celery, children: int, timeout_s: float) -> dict[str, Any]:
    """What a user does without agentq's fan-in: a plan run, the children with submit_many,
    a wait on each AsyncResult, then the continuation run."""
    store = _store(celery)
    started = time.time()
    submit(ORCHESTRATOR, "plan", celery=celery).get(timeout=timeout_s)
    results = submit_many(
        [{"agent": CHILD, "input": f"p{i}"} for i in range(children)], celery=celery
    )
    answers = [r.get(timeout=timeout_s) for r in results]
    merge = "merge " + json.dumps(answers, separators=(",", ":"))
    cont = submit(ORCHESTRATOR, merge, celery=celery)
    cont.get(timeout=timeout_s)
    whole = time.time() - started
    ids = [r.id for r in results]
    fan_in = _call_started(store, cont.id, 0) - _ended_at(store, ids).timestamp()
    statuses = _statuses(store, [*ids, cont.id])
    return {"fan_in_s": fan_in, "whole_s": whole, "children": len(ids), "statuses": statuses}


def _fan_summary(samples: list[dict[str, Any]], children: int) -> dict[str, Any]:
    fan_in = latency_summary([s["fan_in_s"] for s in samples])
    whole = latency_summary([s["whole_s"] for s in samples])
    statuses: dict[str, int] = {}
    for s in samples:
        for status, n in s["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {
        "children": children,
        "repeats": len(samples),
        "fan_in": fan_in,
        "p50_ms": fan_in["p50_ms"],
        "p99_ms": fan_in["p99_ms"],
        "whole_p50_ms": whole["p50_ms"],
        "whole": whole,
        "runs_by_status": statuses,
        "children_seen": sum(s["children"] for s in samples),
    }


def fan_out_side(
    services: Services, triton_url: str, plan: Plan, database_url: str
) -> dict[str, Any]:
    """The fan-out bench on one store: both ways take turns, after one warm-up each."""
    services.flush()
    settings = _settings(services, database_url, triton_url)
    timeout_s = 60 + plan.children
    with ExitStack() as stack:
        celery = services.agentq(settings, stack)
        # One worker per agent type, as deployed: a worker blocks on its first queue only
        # and looks at the others every brpop_timeout (app/celery_ext/transport.py).
        for agent in (ORCHESTRATOR, CHILD):
            _worker(services, settings, [agent], stack, plan.fan_concurrency).wait_ready(celery)
        agentq_fan_out(celery, plan.children, timeout_s)  # warm-up: connections, the model
        client_fan_out(celery, plan.children, timeout_s)
        ours, theirs = [], []
        for _ in range(plan.repeats):
            ours.append(agentq_fan_out(celery, plan.children, timeout_s))
            theirs.append(client_fan_out(celery, plan.children, timeout_s))
    worker = f"two agentq workers (orchestrator, child), threads, c={plan.fan_concurrency}"
    doc = scenario(
        "fan_out",
        "p50_ms",
        {
            "agentq": {
                **_fan_summary(ours, plan.children),
                "worker": worker,
                "way": "delegate: the last child's commit resumes the parent",
            },
            "client": {
                **_fan_summary(theirs, plan.children),
                "worker": worker,
                "way": "submit_many, wait on each AsyncResult, submit the continuation",
            },
        },
        baseline="client",
        higher_is_better=False,
    )
    doc["ratio_p99"] = ratio(doc["sides"]["agentq"]["p99_ms"], doc["sides"]["client"]["p99_ms"])
    doc["ratio_whole_p50"] = ratio(
        doc["sides"]["agentq"]["whole_p50_ms"], doc["sides"]["client"]["whole_p50_ms"]
    )
    return doc


# ---- the command ----


@contextmanager
def _stores(
    services: Services, postgres_url: str | None, kind: str, count: int
) -> Iterator[list[str]]:
    """``count`` fresh stores of ``kind`` (sqlite, postgresql)."""
    if kind == "sqlite":
        yield [services.sqlite_url() for _ in range(count)]
        return
    assert postgres_url is not None
    with ExitStack() as stack:
        yield [stack.enter_context(postgres_schema(postgres_url)) for _ in range(count)]


def run(
    services: Services, triton_url: str, plan: Plan, console: Console
) -> dict[str, dict[str, Any]]:
    """Both benches on SQLite, then PostgreSQL (skipped, with why, when unreachable)."""
    problem = postgres_problem(plan.postgres_url) if plan.postgres_url else "no PostgreSQL URL"
    kinds = ["sqlite"] + (["postgresql"] if problem is None else [])
    docs: dict[str, dict[str, Any]] = {}
    benches: dict[str, tuple[int, Callable[[list[str]], dict[str, Any]]]] = {
        "parked": (2, lambda urls: parked_side(services, triton_url, plan, *urls)),
        "fan_out": (1, lambda urls: fan_out_side(services, triton_url, plan, urls[0])),
    }
    for name, (count, measure) in benches.items():
        if name not in plan.benches:
            continue
        for kind in kinds:
            with (
                console.status(f"{name}, {kind}"),
                _stores(services, plan.postgres_url, kind, count) as urls,
            ):
                try:
                    doc = {**measure(urls), "store": kind}
                except (AgentqError, BenchError) as exc:
                    console.print(f"[red]{name} ({kind}) failed:[/red] {exc}")
                    doc = {"scenario": name, "store": kind, "error": str(exc)}
            if kind == "sqlite":
                docs[name] = doc
            else:
                docs[name]["postgres"] = doc
        if problem is not None:
            docs[name]["postgres"] = {"skipped": problem}
    return docs


def _num(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def show(docs: dict[str, dict[str, Any]], console: Console) -> None:
    """The two tables."""
    for doc in [docs.get("parked"), docs.get("parked", {}).get("postgres")]:
        if not doc or "sides" not in doc:
            continue
        a, b = doc["sides"]["idle"], doc["sides"]["agentq"]
        table = Table(title=f"Parked runs cost nothing ({doc['store']}, one worker -c 4)")
        for column in ("figure", "none parked", f"{b['parked']:,} parked", "b/a"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        table.add_row("trivial runs/s (median)", _num(a["runs_per_s"]), _num(b["runs_per_s"]),
                      _num(doc["ratio"]))  # fmt: skip
        table.add_row("worker CPU ms/run", _num(a["worker_cpu_ms_per_run"]),
                      _num(b["worker_cpu_ms_per_run"]), _num(doc["cpu_per_run_ratio"]))  # fmt: skip
        table.add_row("worker RSS MiB", _num(a["worker_rss_mib"]), _num(b["worker_rss_mib"]),
                      _num(doc["rss_ratio"]))  # fmt: skip
        s = doc["signals"]
        table.add_row("parking runs/s", "", _num(doc["parking"]["runs_per_s"]), "")
        table.add_row("signals/s", "", _num(s["signals_per_s"]), "")
        table.add_row("finished after signal", "", f"{s['finished']:,}/{s['signalled']:,}", "")
        console.print(table)
    for doc in [docs.get("fan_out"), docs.get("fan_out", {}).get("postgres")]:
        if not doc or "sides" not in doc:
            continue
        ours, theirs = doc["sides"]["agentq"], doc["sides"]["client"]
        table = Table(title=f"Fan-out of {ours['children']} children, fan-in latency "
                            f"({doc['store']}, {ours['repeats']} repeats)")  # fmt: skip
        for column in ("figure", "agentq delegate", "client fan-in", "ratio"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        table.add_row("last child end → parent's next call, p50 ms", _num(ours["p50_ms"]),
                      _num(theirs["p50_ms"]), _num(doc["ratio"]))  # fmt: skip
        table.add_row("  p99 ms", _num(ours["p99_ms"]), _num(theirs["p99_ms"]),
                      _num(doc["ratio_p99"]))  # fmt: skip
        table.add_row("submit → answer, p50 ms", _num(ours["whole_p50_ms"]),
                      _num(theirs["whole_p50_ms"]), _num(doc["ratio_whole_p50"]))  # fmt: skip
        console.print(table)
    for name, doc in docs.items():
        for d in (doc, doc.get("postgres", {})):
            if "error" in d:
                console.print(f"[red]{name} ({d['store']}) failed:[/red] {d['error'][:200]}")
            elif "skipped" in d:
                console.print(f"{name}, PostgreSQL skipped: {d['skipped']}")


def main(plan: Plan, out_dir: Path | None, console: Console) -> int:
    """Run both benches, write ``orchestration-parked.json`` and ``orchestration-fan-out.json``
    into ``out_dir``, print the tables; exit code 1 if one failed."""
    out = out_dir or DEFAULT_OUT
    env = environment(REPO_ROOT)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-orch-")))
            services = Services(stack, tmp, plan.concurrency)
            triton = start_triton(stack, tmp)
            docs = run(services, triton.grpc_url, plan, console)
            with console.status("stopping what the bench started"):
                stack.close()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the bench started is stopped[/yellow]")
        return 130
    for name, doc in docs.items():
        full = {**doc, **env, "plan": asdict(plan)}
        write(full, out / f"orchestration-{name.replace('_', '-')}.json")
    show(docs, console)
    console.print(f"took {time.monotonic() - started:.0f} s; results in {out}")
    failed = any("error" in d or "error" in d.get("postgres", {}) for d in docs.values())
    return 1 if failed else 0
