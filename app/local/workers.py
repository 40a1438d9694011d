"""Worker processes started and stopped by PID (demo, e2e tests, benchmarks)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from app.config import Settings, child_env, settings_env
from app.errors import LocalServiceError
from app.local.processes import log_tail, stop_process, wait_until


class WorkerProcess:
    """``agentq worker --agents ...`` as a child process with its own log file."""

    def __init__(
        self,
        settings: Settings,
        agents: list[str],
        *,
        log_dir: Path,
        concurrency: int | None = None,
        extra_env: dict[str, str] | None = None,
        include: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.settings = settings
        self.agents = agents
        self.concurrency = concurrency
        self.include = list(include)  # modules it imports (``--include``): agents and tools
        self.cwd = cwd
        self.extra_env = extra_env or {}
        self.node = f"{'-'.join(agents)}-{uuid.uuid4().hex[:8]}@localhost"
        # The caller owns the folder (a temp dir it removes), so nothing is left behind.
        self.log_path = log_dir / f"{self.node.split('@')[0]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise LocalServiceError("worker not started")
        return self.proc.pid

    def start(self, celery: Celery, deadline_s: float = 60.0) -> WorkerProcess:
        """Start the worker and wait until it answers a ping over the broker."""
        return self.spawn().wait_ready(celery, deadline_s)

    def spawn(self) -> WorkerProcess:
        """Start the process without waiting (start several, then wait for each)."""
        args = [
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--agents",
            ",".join(self.agents),
            "-n",
            self.node,
        ]
        if self.concurrency:
            args += ["-c", str(self.concurrency)]
        for module in self.include:
            args += ["--include", module]
        env = child_env({**settings_env(self.settings), **self.extra_env, "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
            )
        return self

    def wait_ready(self, celery: Celery, deadline_s: float = 60.0) -> WorkerProcess:
        """Wait until the worker answers a ping over the broker, or stop it and raise."""

        def answers() -> bool:
            try:
                return bool(celery.control.ping(destination=[self.node], timeout=0.5))
            except (OperationalError, redis.ConnectionError):
                return False  # a connection Redis dropped (a restart): the next ping redials

        if self.proc is None or not wait_until(answers, deadline_s, self.proc):
            self.stop()
            raise LocalServiceError(f"worker {self.node} did not start:\n{log_tail(self.log_path)}")
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Celery's warm shutdown), SIGKILL if it does not exit in time."""
        return stop_process(self.proc, timeout_s) if self.proc else None

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stop several at once, then ``stop`` each)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-step, as on a node failure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
