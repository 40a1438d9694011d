"""What the suite's scenarios start and watch: Redis, session stores, each side's workers.

Everything is started into an :class:`~contextlib.ExitStack` and stopped by PID with it;
files live in the suite's temp folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.utils.serialization import bytes_to_str
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.celery_ext.app import create_celery
from app.config import Settings, TritonSettings, child_env, settings_env
from app.local.redis import RedisServer
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from bench.dramatiq_side import DramatiqProducer, DramatiqWorker
from bench.stock import StockWorker, stock_celery

TRIVIAL = "trivial"  # backend echo: one step, no model call, session loaded and committed
HOLDING = "holding"  # backend triton: one model call (the memory scenario's runs wait in it)
AGENTS_YAML = f"""agents:
  - name: {TRIVIAL}
    backend: echo
    max_steps: 2
  - name: {HOLDING}
    max_steps: 2
    max_tokens: 16
"""
RESULT_PREFIX = "celery-task-meta-"  # both apps' Redis result keys and channels
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used (None when it is gone)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FlaggedWorkerProcess(WorkerProcess):
    """The ``agentq worker`` command WorkerProcess runs, with the interpreter's flags before
    ``-m`` (``-X importtime``; PYTHONIMPORTTIME had no effect on this machine's Python 3.11)."""

    def __init__(self, *args: Any, python_flags: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.python_flags = list(python_flags)

    def spawn(self) -> FlaggedWorkerProcess:
        if not self.python_flags:
            super().spawn()
            return self
        args = [sys.executable, *self.python_flags, "-m", "app.cli", "worker"]
        args += ["--agents", ",".join(self.agents), "-n", self.node]
        args += ["-c", str(self.concurrency)] if self.concurrency else []
        env = child_env({**settings_env(self.settings), "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self


@dataclass
class Finished:
    """Results seen by a :class:`ResultWatch`: id -> (status, Unix time seen)."""

    seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def times(self, ids: set[str] | None = None) -> list[float]:
        return sorted(t for i, (_, t) in self.seen.items() if ids is None or i in ids)

    def failed(self) -> int:
        return sum(1 for status, _ in self.seen.values() if status != "SUCCESS")


class ResultWatch:
    """Every result the backend publishes, read by a thread of its own as it comes.

    Subscribed on creation: results published after that wait on the socket until read.
    """

    READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(RESULT_PREFIX + "*")
        self.done = Finished()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="bench-results", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        skip = len(RESULT_PREFIX)
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if msg is None or msg["type"] != "pmessage":
                continue
            now = time.time()
            status = json.loads(msg["data"]).get("status")
            if status in self.READY:
                with self._changed:
                    self.done.seen[bytes_to_str(msg["channel"])[skip:]] = (status, now)
                    self._changed.notify_all()

    def wait(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` results were seen; False when the timeout passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.done.seen) >= count, timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.pubsub.close()


@contextmanager
def postgres_schema(server_url: str) -> Iterator[str]:
    """A fresh migrated schema on ``server_url``, dropped afterwards; raises when unreachable."""
    schema = f"agentq_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
        rendered = url.render_as_string(hide_password=False)
        migrate(rendered)
        try:
            yield rendered
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def postgres_problem(server_url: str) -> str | None:
    """Why PostgreSQL at ``server_url`` cannot be used (None: it answers)."""
    engine = create_engine(server_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        return f"PostgreSQL at {server_url} is unreachable ({str(exc.orig).strip()})"
    except ImportError as exc:  # no driver: the postgres extra is not installed
        return f"PostgreSQL driver missing ({exc}); install agentq[postgres]"
    finally:
        engine.dispose()
    return None


class Services:
    """One Redis for the whole suite (flushed between measurements) and the temp folder."""

    def __init__(self, stack: ExitStack, tmp: Path, concurrency: int) -> None:
        self.stack, self.tmp, self.concurrency = stack, tmp, concurrency
        server = RedisServer()
        stack.callback(server.cleanup)
        server.start()
        self.redis_url = server.url
        self.redis = server.client()
        stack.callback(self.redis.close)
        self.agents_file = tmp / "agents.yaml"
        self.agents_file.write_text(AGENTS_YAML)
        self._files = 0
        self.stock = stock_celery(self.redis_url)
        stack.callback(self.stock.close)
        self.dramatiq = DramatiqProducer(self.redis_url)
        stack.callback(self.dramatiq.close)

    def sqlite_url(self) -> str:
        """A fresh, migrated SQLite file in the temp folder."""
        self._files += 1
        url = f"sqlite:///{self.tmp / f'agentq-{self._files}.sqlite3'}"
        migrate(url)
        return url

    def settings(self, database_url: str, triton_url: str | None = None) -> Settings:
        extra: dict[str, Any] = {}
        if triton_url:
            extra["triton"] = TritonSettings(urls=[triton_url])
        return Settings(
            redis_url=self.redis_url,
            database_url=database_url,
            agents_file=self.agents_file,
            **extra,
        )

    def agentq(self, settings: Settings, stack: ExitStack) -> Celery:
        """The agentq app (producer side) for ``settings``, closed with ``stack``."""
        app = create_celery(settings)
        stack.callback(app.close)
        return app

    def agentq_worker(
        self,
        settings: Settings,
        agent: str,
        stack: ExitStack,
        concurrency: int | None = None,
        python_flags: Sequence[str] = (),
    ) -> WorkerProcess:
        """An ``agentq worker`` process (threads pool), spawned, stopped with ``stack``."""
        worker = FlaggedWorkerProcess(
            settings,
            [agent],
            log_dir=self.tmp,
            concurrency=concurrency or self.concurrency,
            python_flags=python_flags,
        )
        stack.callback(worker.stop)
        return worker.spawn()

    def stock_worker(
        self, stack: ExitStack, concurrency: int | None = None, python_flags: Sequence[str] = ()
    ) -> StockWorker:
        """A stock Celery worker process, same pool and concurrency, stopped with ``stack``."""
        worker = StockWorker(
            self.redis_url,
            pool=Settings().worker.pool,
            concurrency=concurrency or self.concurrency,
            log_dir=self.tmp,
            python_flags=python_flags,
        )
        stack.callback(worker.stop)
        return worker.spawn()

    def dramatiq_worker(self, stack: ExitStack, python_flags: Sequence[str] = ()) -> DramatiqWorker:
        """A Dramatiq worker (one process, as many threads as the others' concurrency),
        spawned, stopped with ``stack``."""
        worker = DramatiqWorker(
            self.redis_url, threads=self.concurrency, log_dir=self.tmp, python_flags=python_flags
        )
        stack.callback(worker.stop)
        return worker.spawn()

    def watch(self, stack: ExitStack) -> ResultWatch:
        watch = ResultWatch(self.redis)
        stack.callback(watch.close)
        return watch

    def flush(self) -> None:
        self.redis.flushdb()
