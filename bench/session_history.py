"""The session history cache on the step path: sessions of 20 earlier turns, runs of two steps
(a tool call, then the answer) driven through the step runner (real Redis, SQLite or
PostgreSQL, an instant in-process model, no broker), with the cache on and off in alternate
rounds of one run. Reported: SQL reads per step and runs/s, and their ratios.

    agentq bench sessions [--postgres-url URL] [--redis-url URL]
    python -m bench.session_history
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import event

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import SessionSettings, Settings
from app.inference import text_protocol
from app.inference.backend import ChatRequest, Completion
from app.memory.history import claim_session
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner

TURNS = 20
SESSIONS = 8
RUNS_PER_SESSION = 6
ROUNDS = 3  # of each setting, alternating
REGISTRY = AgentRegistry([AgentSpec(name="chat", tools=("word_count",), max_steps=4)])
TEXT = "a question about the weather and the tides on the coast this week " * 3


class InstantModel:
    """A tool call on a run's first step, its answer on the second; no wait."""

    def generate(self, request: ChatRequest, **_route: Any) -> Completion:
        if request.messages[-1].role == "user":
            text, calls = text_protocol.parse('{"tool": "word_count", "args": {"text": "a b"}}')
            return Completion(text, 1, 1, 0.0, "bench", calls)
        return Completion("Answer: " + TEXT, 1, 1, 0.0, "bench")

    def stream(self, request: ChatRequest, **_route: Any) -> Any:
        raise NotImplementedError

    def health(self) -> bool:
        return True

    def missing_models(self, models: Any) -> list[str]:
        return []

    def close(self) -> None:
        pass


class Selects:
    """SELECT statements run on a store's engine."""

    def __init__(self, store: SessionStore) -> None:
        self.count = 0
        self._lock = threading.Lock()
        event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip()[:6].upper() == "SELECT":
            with self._lock:
                self.count += 1


@dataclass
class Round:
    cached: bool
    runs: int
    steps: int
    selects: int
    seconds: float


def prefill(store: SessionStore, sessions: list[str]) -> None:
    for session_id in sessions:
        for turn in range(TURNS):
            run_id = f"{session_id}-past-{turn}"
            assert claim_session(store, NewRun(run_id, "chat", TEXT, session_id)).held_by(run_id)
            final = StepRecord(0, StepKind.FINAL, "Answer: " + TEXT)
            store.commit_step(run_id, final, final_answer=TEXT, session_id=session_id)


def one_round(
    store: SessionStore, client: Any, sessions: list[str], cached: bool, selects: Selects
) -> Round:
    settings = Settings(sessions=SessionSettings(history_cache=cached))
    runner = StepRunner(settings, REGISTRY, store, client, {"triton": InstantModel()}, "bench")
    tag = uuid.uuid4().hex[:6]

    def drive(session_id: str) -> int:
        steps = 0
        for n in range(RUNS_PER_SESSION):
            run_id, step = f"{session_id}-{tag}-{n}", 0
            while True:
                result = runner.run_step(StepMessage(run_id, "chat", step, TEXT, session_id))
                steps += 1
                if result.outcome is Outcome.DONE:
                    break
                assert result.outcome is Outcome.NEXT, result
                step = result.next_step or 0
        return steps

    before = selects.count
    started = time.perf_counter()
    with ThreadPoolExecutor(len(sessions)) as pool:
        steps = sum(pool.map(drive, sessions))
    seconds = time.perf_counter() - started
    runner.tools.close()
    return Round(cached, len(sessions) * RUNS_PER_SESSION, steps, selects.count - before, seconds)


def measure(database_url: str, redis_url: str) -> dict[bool, list[Round]]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = SessionStore.from_url(database_url, migrate=True)
    try:
        sessions = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(SESSIONS)]
        prefill(store, sessions)
        selects = Selects(store)
        rounds: dict[bool, list[Round]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for cached in (True, False):
                rounds[cached].append(one_round(store, client, sessions, cached, selects))
        return rounds
    finally:
        store.close()
        client.flushdb()
        client.close()


def report(results: dict[str, dict[bool, list[Round]]], console: Console) -> None:
    table = Table(
        "store", "history", "SQL reads / step", "runs/s (median)", "reads ratio", "runs/s ratio",
        title=f"Session history cache: {SESSIONS} sessions of {TURNS} turns, runs of 2 steps",
    )  # fmt: skip
    for store_name, rounds in results.items():
        rows = {}
        for cached, measured in rounds.items():
            reads = sum(r.selects for r in measured) / sum(r.steps for r in measured)
            rate = statistics.median(r.runs / r.seconds for r in measured)
            rows[cached] = (reads, rate)
        for cached in (False, True):
            reads, rate = rows[cached]
            ratios = ("", "")
            if cached:
                ratios = (f"{reads / rows[False][0]:.2f}x", f"{rate / rows[False][1]:.2f}x")
            table.add_row(
                store_name, "Redis cache" if cached else "SQL only", f"{reads:.2f}",
                f"{rate:.1f}", *ratios,
            )  # fmt: skip
    console.print(table)


def main(postgres_url: str | None, redis_url: str, console: Console | None = None) -> None:
    console = console or Console()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        results["SQLite"] = measure(f"sqlite:///{Path(folder) / 'bench.sqlite3'}", redis_url)
    if postgres_url:
        results["PostgreSQL"] = measure(postgres_url, redis_url)
    report(results, console)


if __name__ == "__main__":
    import sys

    main(
        sys.argv[1] if len(sys.argv) > 1 else "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/7",
    )
