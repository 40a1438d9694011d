"""The stock-Celery side of the bench: a plain Celery app with no-op tasks, and its worker.

What a user would write without agentq: ``Celery(broker=redis, backend=redis)`` with Celery's
defaults (early acks, prefetch multiplier 4, JSON) and kombu's own Redis transport (agentq
replaces it in processes that build an agentq app, so the transport is named here). The
worker runs with the pool and concurrency the bench gives agentq's worker.

``python -m bench.stock REDIS_URL -P threads -c 8 -n NODE`` runs the worker.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from celery import Celery

from app.errors import LocalServiceError
from app.local.processes import log_tail, stop_process, wait_until

STOCK_TRANSPORT = "kombu.transport.redis:Transport"
QUEUE = "stock"
NOOP, STAMP, SLEEP = "bench.noop", "bench.stamp", "bench.sleep"


def stock_celery(redis_url: str) -> Celery:
    """The plain Celery app on ``redis_url`` (broker and result backend), its tasks defined."""
    app = Celery("bench-stock", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        broker_transport=STOCK_TRANSPORT,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=NOOP, shared=False)
    def noop() -> None:
        """Does nothing: what dispatching a task costs, and nothing else."""

    @app.task(name=STAMP, shared=False)
    def stamp() -> float:
        """When the task started (Unix time): the latency probe."""
        return time.time()

    @app.task(name=SLEEP, shared=False)
    def sleep(seconds: float) -> None:
        """Holds a pool slot, as a task waiting on a model would (memory scenario)."""
        time.sleep(seconds)

    return app


class StockWorker:
    """``python -m bench.stock`` as a child process, stopped by PID."""

    def __init__(
        self,
        redis_url: str,
        *,
        pool: str,
        concurrency: int,
        log_dir: Path,
        python_flags: Sequence[str] = (),
    ) -> None:
        self.redis_url, self.pool, self.concurrency = redis_url, pool, concurrency
        self.python_flags = list(python_flags)  # the interpreter's: ``-X importtime``
        self.node = f"stock-{uuid.uuid4().hex[:8]}@localhost"
        self.log_path = log_dir / f"{self.node.split('@')[0]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise LocalServiceError("stock worker not started")
        return self.proc.pid

    def spawn(self) -> StockWorker:
        """Start the process without waiting."""
        args = [sys.executable, *self.python_flags, "-m", "bench.stock", self.redis_url]
        args += ["-P", self.pool, "-c", str(self.concurrency), "-n", self.node]
        cwd = Path(__file__).resolve().parent.parent  # the checkout: bench/ is importable
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        return self

    def wait_ready(self, celery: Celery, deadline_s: float = 60.0) -> StockWorker:
        """Wait until the worker answers a ping, or stop it and raise."""

        def answers() -> bool:
            return bool(celery.control.ping(destination=[self.node], timeout=0.5))

        if self.proc is None or not wait_until(answers, deadline_s, self.proc):
            self.stop()
            raise LocalServiceError(f"stock worker did not start:\n{log_tail(self.log_path)}")
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (warm shutdown), SIGKILL if it lingers."""
        return stop_process(self.proc, timeout_s) if self.proc else None


def main(argv: list[str]) -> None:
    """Run the stock worker: ``REDIS_URL`` then Celery worker options."""
    url, *options = argv
    app = stock_celery(url)
    app.worker_main(
        ["worker", "-Q", QUEUE, "-l", "WARNING", "--without-mingle", "--without-gossip", *options]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
