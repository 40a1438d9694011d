"""The Dramatiq side of the bench, the second baseline: its worker process and its producer.

The worker is Dramatiq's own CLI, ``python -m dramatiq bench.dramatiq_actors:setup -p 1 -t N``
(one worker process of N threads; N is the concurrency the bench gives agentq's worker), on
the suite's Redis. Dramatiq's main process forks the worker process, which imports the actors
and consumes; the bench stops the main process by PID, which stops its child. Per message the
worker runs the actor, stores its result with Dramatiq's Results middleware on Redis and
publishes the outcome in the same pipeline (bench/dramatiq_actors.py), and acks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dramatiq import Actor, Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results

from app.config import child_env
from app.errors import LocalServiceError
from app.local.processes import log_tail, stop_process, wait_until
from bench.dramatiq_actors import URL_ENV, broker_for, declare

READY_LINE = "Worker process is ready for action."  # Dramatiq's log line once consuming
CHECKOUT = Path(__file__).resolve().parent.parent  # bench/ is importable from here


class DramatiqProducer:
    """The bench's end of the Dramatiq side: the broker, its actors and its result backend."""

    def __init__(self, redis_url: str) -> None:
        self.broker: RedisBroker = broker_for(redis_url)
        self.actors: dict[str, Actor[Any, Any]] = declare(self.broker)
        self.backend = next(m for m in self.broker.middleware if isinstance(m, Results)).backend

    def send(self, actor: str) -> Message[Any]:
        """One message to ``actor``, enqueued now."""
        return self.actors[actor].send()

    def fill(self, actor: str, count: int) -> int:
        """``count`` messages to ``actor``, enqueued one by one (one round trip each)."""
        for _ in range(count):
            self.actors[actor].send()
        return count

    def result(self, message: Message[Any]) -> Any:
        """What the actor returned for ``message`` (read back from the result backend)."""
        return message.get_result(backend=self.backend)

    def close(self) -> None:
        self.broker.client.close()
        self.backend.client.close()


def child_pids(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children, read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


class DramatiqWorker:
    """``python -m dramatiq`` (one process of ``threads`` threads) as a child, stopped by PID."""

    def __init__(
        self, redis_url: str, *, threads: int, log_dir: Path, python_flags: Sequence[str] = ()
    ) -> None:
        self.redis_url, self.threads = redis_url, threads
        self.python_flags = list(python_flags)  # the interpreter's: ``-X importtime``
        self.name = f"dramatiq-{uuid.uuid4().hex[:8]}"
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._worker_pid: int | None = None

    @property
    def main_pid(self) -> int:
        if self.proc is None:
            raise LocalServiceError("dramatiq worker not started")
        return self.proc.pid

    @property
    def pid(self) -> int:
        """The worker process (Dramatiq's main process forks it): the one that runs actors."""
        if self._worker_pid is None:
            if not wait_until(lambda: bool(child_pids(self.main_pid)), 30.0, self.proc):
                raise LocalServiceError(f"dramatiq forked no worker:\n{log_tail(self.log_path)}")
            self._worker_pid = child_pids(self.main_pid)[0]
        return self._worker_pid

    def spawn(self) -> DramatiqWorker:
        """Start the process without waiting."""
        args = [sys.executable, *self.python_flags, "-m", "dramatiq", "bench.dramatiq_actors:setup"]
        args += ["-p", "1", "-t", str(self.threads), "--path", str(CHECKOUT)]
        env = child_env({URL_ENV: self.redis_url, "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=CHECKOUT
            )
        return self

    def wait_ready(self, deadline_s: float = 60.0) -> DramatiqWorker:
        """Wait until the worker process logs that it consumes, or stop it and raise."""

        def ready() -> bool:
            return READY_LINE in self.log_path.read_text(errors="replace")

        if self.proc is None or not wait_until(ready, deadline_s, self.proc):
            self.stop()
            raise LocalServiceError(f"dramatiq worker did not start:\n{log_tail(self.log_path)}")
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to the main process (it stops its worker process), SIGKILL if it lingers."""
        code = stop_process(self.proc, timeout_s) if self.proc else None
        if self._worker_pid is not None and Path(f"/proc/{self._worker_pid}").exists():
            # Only when the main process was killed before it could stop its child.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._worker_pid, signal.SIGKILL)
        return code
