"""Test your own agents through a real worker: :func:`local_stack` starts, on this machine,
what a run needs and stops it all afterwards.

    from app.testing import local_stack

    def test_weather_agent():
        with local_stack(include=["weather"]) as stack:
            answer = stack.run("weather", 'Paris? [tool:forecast {"city": "Paris"}]')
        assert "sunny" in answer

The stack is an embedded Redis on a free port, the local Triton on CPU serving the scripted
model (``[tool:NAME {args}]`` in the input asks it for that tool call; its answer after a tool
is ``Answer: <the tool's result>``), a SQLite session store in a temp folder and one
``agentq worker --include ...`` process run from the current directory. Every process is
stopped by its PID when the ``with`` block ends, even when the test fails. It needs what
``agentq demo`` needs: a ``redis-server`` >= 6.2 (or ``agentq[local-model]``) and the
tritonserver of ``agentq triton install`` (installed on first use).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from celery import Celery

from app.agents.loader import load_registry
from app.celery_ext.app import create_celery
from app.config import RedisTLSSettings, Settings
from app.local import llm
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.memory.sessions import SessionStore
from app.producer.results import RunResult
from app.producer.submit import submit

__all__ = ["LocalStack", "local_stack"]


@dataclass(frozen=True)
class LocalStack:
    """The running stack: submit runs to it, read their steps from its session store."""

    settings: Settings  # what a child process needs to join it (app.config.settings_env)
    celery: Celery
    store: SessionStore
    redis: RedisServer
    triton: TritonServer
    worker: WorkerProcess  # its log: worker.log_path (removed with the stack)

    def submit(self, agent: str, input: Any, **options: Any) -> RunResult:
        """Enqueue one run, as :func:`app.submit` does (same options)."""
        return submit(agent, input, celery=self.celery, **options)

    def run(self, agent: str, input: Any, timeout: float = 60.0, **options: Any) -> Any:
        """Submit one run and return its answer; a failed run raises
        :class:`app.errors.RunFailedError` saying why."""
        return self.submit(agent, input, **options).get(timeout=timeout)


@contextmanager
def local_stack(
    include: Sequence[str] = (),
    agents: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
    model: Literal["scripted", "local"] = "scripted",
) -> Iterator[LocalStack]:
    """Start Redis, Triton, a session store and one worker serving ``agents`` (default: every
    agent of the registry, i.e. those the ``include`` modules declare), importing ``include``
    from the current directory; yield a :class:`LocalStack`; stop everything by PID.

    ``settings`` (default: ``Settings()``, from the environment) gives the rest of the
    configuration; its Redis, database and Triton are replaced by the stack's own.
    ``model="local"``: Triton serves the real local model (SmolLM2-135M-Instruct on
    llama.cpp, the ``llm`` extra) instead of the scripted one.
    """
    base = settings if settings is not None else Settings()
    base = base.model_copy(update={"include": [*base.include, *include]})
    if model == "local":
        llm.gguf_path()  # the llm extra is installed: one line saying how, else
    # Imports the modules here too (submit checks runs against them), before anything starts:
    # a module that fails to import fails the test at once, in one line.
    registry = load_registry(base)
    served = list(agents) if agents is not None else registry.names
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-stack-")))
        redis_server = stack.enter_context(RedisServer())
        repository = base.triton.model_repository
        if model == "local":
            base = llm.with_local_model(base, llm.prepare_model(tmp / "tokenizer"))
            repository = llm.llm_repository(tmp / "models")
        triton = TritonServer(
            install_triton(base.triton.home), repository, log_path=tmp / "triton.log"
        )
        stack.enter_context(triton)
        merged = base.model_copy(
            update={
                "redis_url": redis_server.url,
                "broker_url": None,
                "result_backend": None,
                "redis_password": None,
                "redis_tls": RedisTLSSettings(),
                "database_url": f"sqlite:///{tmp / 'agentq.sqlite3'}",
                "triton": base.triton.model_copy(
                    update={"urls": [triton.grpc_url], "replicas": []}
                ),
            }
        )
        migrate(merged.database_url)  # before the worker starts, as the demo does
        celery = create_celery(merged, registry)
        stack.callback(celery.close)
        worker = WorkerProcess(merged, served, log_dir=tmp, cwd=Path.cwd())
        stack.callback(worker.stop)
        worker.start(celery)
        store = SessionStore.from_url(merged.database_url, migrate=False)
        stack.callback(store.close)
        yield LocalStack(
            settings=merged,
            celery=celery,
            store=store,
            redis=redis_server,
            triton=triton,
            worker=worker,
        )
