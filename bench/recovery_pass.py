"""What a recovery pass costs on a healthy system: a store with N finished runs, 64 running
runs that moved recently and 1,000 accepted runs not yet started, and no message lost.

    python -m bench.recovery_pass sqlite:////tmp/x.sqlite3 20000 [redis://127.0.0.1:6379/4]

Prints the median and worst of 20 passes (docs/benchmarks.md). The Redis database given is
emptied before and after.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import redis

from app.celery_ext.app import create_celery
from app.config import Settings
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.recovery import record_accepted
from app.memory.sessions import SessionStore
from app.tasks.recovery import Recoverer

PASSES = 20


def main(database_url: str, finished: int, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = Settings(redis_url=redis_url, database_url=database_url)
    store = SessionStore.from_url(database_url, migrate=True)
    tag = uuid.uuid4().hex[:8]
    for i in range(finished):
        run_id = f"done-{tag}-{i}"
        record = StepRecord(0, StepKind.FINAL, "ok")
        store.commit_step(run_id, record, final_answer="ok", new_run=NewRun(run_id, "coder", "x"))
    for i in range(64):
        run_id = f"live-{tag}-{i}"
        store.commit_step(
            run_id, StepRecord(0, StepKind.TOOL, "t"), new_run=NewRun(run_id, "coder", "x")
        )
    accepted = [(f"new-{tag}-{i}", "coder", {"agent": "coder", "input": "x"}) for i in range(1000)]
    record_accepted(store, accepted)
    celery = create_celery(settings)
    recoverer = Recoverer.for_app(celery, store)
    times = []
    for _ in range(PASSES):
        started = time.perf_counter()
        report = recoverer.run_once()
        times.append(time.perf_counter() - started)
    assert report is not None and not report.published
    print(
        f"{store.engine.dialect.name}, {finished} finished runs: a pass takes "
        f"{statistics.median(times) * 1000:.2f} ms (median of {PASSES}), "
        f"{max(times) * 1000:.2f} ms at worst"
    )
    celery.close()
    store.close()
    client.flushdb()


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3] if len(sys.argv) > 3 else "redis://127.0.0.1:6379/4",
    )
