"""Cold start: a worker process spawned with one run already waiting on its queue, to that
run finished (its result published and seen by the bench), for the three sides.

agentq: the real ``agentq worker`` (as bench/services.py starts it) and one trivial run (the
echo agent: one step, session loaded and committed); stock Celery: its worker and one no-op
task; Dramatiq: its CLI, one process, and one no-op message. Several rounds, the sides taking
turns (each round starts with the next side), so load that drifts reaches all three alike.

Then the import-time budget: each worker's command once more under ``python -X importtime``,
stopped as soon as its run finished, its log parsed for the total and the modules that took
longest, cumulative (what its warm shutdown imports is in it too: little next to the start).
These rounds are not timed: importtime slows them.

Every side's processes read compiled bytecode, as in the worker image (whose site-packages are
compiled at build time): one untimed round per side fills a private bytecode cache
(``PYTHONPYCACHEPREFIX`` in the scenario's temp folder), written even where
``PYTHONDONTWRITEBYTECODE`` is set, as it is on the development machines. Without it each
process compiles every module it imports from source, which on those machines took longer
than the start itself.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.producer.submit import submit
from bench.dispatch import DrainError
from bench.dramatiq_actors import NOOP as NOOP_ACTOR
from bench.report import scenario, target
from bench.services import TRIVIAL, Services
from bench.stock import NOOP

TARGET_S = 1.0  # issue 22: serving within a second of starting
FIRST_RUN_TIMEOUT_S = 60.0
TOP_IMPORTS = 15
IMPORTTIME = ("-X", "importtime")
# What issue 22 keeps out of a worker whose agents do not use it (top-level packages).
OPTIONAL_PACKAGES = (
    "tritonclient", "grpc", "opentelemetry", "alembic", "flower", "rich", "psycopg",
    "fastapi", "uvicorn", "mcp", "matplotlib",
)  # fmt: skip
Spawn = Callable[[ExitStack, Sequence[str]], Any]


@dataclass(frozen=True)
class Side:
    """How one side's run is enqueued and its worker spawned (into a stack, with the
    interpreter's flags)."""

    name: str
    enqueue: Callable[[], object]
    spawn: Spawn


def first_run(
    services: Services, side: Side, python_flags: Sequence[str] = ()
) -> tuple[float, Path]:
    """Enqueue one run, spawn the worker, wait for the run's result: seconds from the spawn
    to the result seen, and the worker's log (the worker is stopped on return)."""
    services.flush()
    with ExitStack() as stack:
        watch = services.watch(stack)
        side.enqueue()
        spawned = time.time()
        worker = side.spawn(stack, python_flags)
        if not watch.wait(1, FIRST_RUN_TIMEOUT_S):
            raise DrainError(f"{side.name}: no run finished in {FIRST_RUN_TIMEOUT_S:.0f} s; "
                             f"log: {worker.log_path}")  # fmt: skip
        (status, seen_at), *_ = watch.done.seen.values()
        if status != "SUCCESS":
            raise DrainError(f"{side.name}: the run ended {status}; log: {worker.log_path}")
        return seen_at - spawned, worker.log_path


@contextmanager
def compiled_bytecode(folder: Path) -> Iterator[None]:
    """Child processes started inside read and write compiled bytecode under ``folder``; this
    process's environment is put back after."""
    saved = {
        name: os.environ.get(name) for name in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")
    }
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def summary(seconds: list[float]) -> dict[str, Any]:
    """Median, spread and every round of one side, in seconds."""
    return {
        "rounds_s": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
        "spread_s": round(max(seconds) - min(seconds), 3),
    }


def _module(name: str, own_us: int, cumulative_us: int) -> dict[str, Any]:
    return {
        "module": name.strip(),
        "depth": (len(name) - len(name.lstrip())) // 2,  # importtime indents by two per level
        "cumulative_ms": round(cumulative_us / 1000, 1),
        "self_ms": round(own_us / 1000, 1),
    }


def import_times(log: str, top: int = TOP_IMPORTS) -> dict[str, Any]:
    """The ``-X importtime`` lines of ``log``: total (the sum of self times), module count,
    the ``top`` modules by cumulative time, and which optional packages were imported."""
    rows = []
    for line in log.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        rows.append((name.rstrip(), int(own), int(cumulative)))
    names = {name.strip().split(".")[0] for name, _, _ in rows}
    ranked = sorted(rows, key=lambda row: row[2], reverse=True)[:top]
    return {
        "total_ms": round(sum(own for _, own, _ in rows) / 1000, 1),
        "modules": len(rows),
        "top_cumulative": [_module(name, own, cum) for name, own, cum in ranked],
        "optional_packages_imported": sorted(p for p in OPTIONAL_PACKAGES if p in names),
    }


def sides(services: Services, stack: ExitStack) -> list[Side]:
    """The three sides; agentq's runs go to one migrated SQLite file for every round."""
    settings = services.settings(services.sqlite_url())
    celery = services.agentq(settings, stack)
    noop = services.stock.tasks[NOOP]
    return [
        Side("agentq", lambda: submit(TRIVIAL, "ping", celery=celery),
             lambda s, flags: services.agentq_worker(settings, TRIVIAL, s, python_flags=flags)),
        Side("stock", noop.delay, lambda s, flags: services.stock_worker(s, python_flags=flags)),
        Side("dramatiq", lambda: services.dramatiq.send(NOOP_ACTOR),
             lambda s, flags: services.dramatiq_worker(s, python_flags=flags)),
    ]  # fmt: skip


def run(services: Services, rounds: int) -> dict[str, Any]:
    """The coldstart scenario's document."""
    with ExitStack() as stack:
        stack.enter_context(compiled_bytecode(services.tmp / "pycache"))
        all_sides = sides(services, stack)
        for side in all_sides:  # untimed: fills the bytecode cache
            first_run(services, side)
        seconds: dict[str, list[float]] = {side.name: [] for side in all_sides}
        for r in range(rounds):
            for side in all_sides[r % 3 :] + all_sides[: r % 3]:
                seconds[side.name].append(first_run(services, side)[0])
        imports = {}
        for side in all_sides:
            _, log = first_run(services, side, IMPORTTIME)
            imports[side.name] = import_times(log.read_text(errors="replace"))
    workers = {
        "agentq": f"agentq worker, threads, c={services.concurrency}",
        "stock": f"celery worker, threads, c={services.concurrency}, no mingle, no gossip",
        "dramatiq": f"dramatiq, 1 process x {services.concurrency} threads",
    }
    figures = {
        name: {**summary(s), "worker": workers[name], "imports": imports[name]}
        for name, s in seconds.items()
    }
    doc = scenario(
        "coldstart", "median_s", figures, higher_is_better=False, rounds=rounds,
        bytecode="compiled, cache filled by one untimed round per side",
    )  # fmt: skip
    doc["targets"] = {
        "agentq_median_s": target(figures["agentq"]["median_s"], TARGET_S, False),
        "ratio": target(doc["ratio"], 1.0, False),
    }
    return doc
