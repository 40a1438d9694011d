"""What a worker process needs to run steps, built once per process on first use."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from celery import Celery

from app.agents.registry import AgentRegistry
from app.celery_ext.context import context_of
from app.celery_ext.transport import acks_in_pipelines
from app.config import Settings
from app.errors import ConfigurationError
from app.inference.factory import agent_models, build_pools
from app.inference.pool import ReplicaPool
from app.memory.migrate import ensure_schema
from app.memory.sessions import SessionStore
from app.ops import tracing
from app.ops.redis_clients import redis_client
from app.tasks.runner import StepRunner


@dataclass
class WorkerRuntime:
    """The external clients of one worker process (it keeps no other state)."""

    settings: Settings
    registry: AgentRegistry
    store: SessionStore
    redis: Any
    pools: dict[str, ReplicaPool]  # backend kind -> its replicas
    runner: StepRunner
    # The broker is ``redis``, with kombu's key names: a step publishes its next step and
    # acknowledges its own message in one MULTI (app.celery_ext.transport.ack_on).
    pipeline_acks: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        registry: AgentRegistry,
        worker_name: str = "",
        agents: Collection[str] | None = None,
    ) -> WorkerRuntime:
        """Connect to the session store, Redis and the model servers named by ``settings``
        that ``agents`` (the agent types the worker serves; default: all) use."""
        served = [registry.spec(n) for n in agents] if agents is not None else list(registry)
        tracing.setup(settings.tracing)  # once per process: before the first step
        store = SessionStore.from_url(settings.database_url, migrate=False)
        # A schema behind is upgraded (auto_migrate) or refused; Alembic is imported only then.
        ensure_schema(store.engine, upgrade=settings.auto_migrate)
        client = redis_client(settings)
        pools = build_pools(
            settings,
            agent_models(settings, ((s.backend, s.model) for s in served)),
            kinds={s.backend for s in served},  # only the clients its agents use
        )
        missing = sorted({s.backend for s in served} - set(pools))
        if missing:
            for pool in pools.values():
                pool.close()
            raise ConfigurationError(
                f"agents use backend(s) {missing} but no replicas are configured for them "
                "(set AGENTQ_OPENAI__REPLICAS)"
            )
        runner = StepRunner(settings, registry, store, client, pools, worker_name)
        servers = [server for spec in served for server in spec.mcp_servers]
        if servers:  # imports the mcp package: only workers whose agents use MCP servers
            from app.agents.mcp import McpPool

            runner.tools.mcp = McpPool.start(servers)
        return cls(settings, registry, store, client, pools, runner)

    def close(self) -> None:
        """Release connections (MCP servers started by the worker are stopped)."""
        self.runner.tools.close()
        self.runner.cancels.close()
        self.runner.long_term.close()
        for pool in self.pools.values():
            pool.close()
        self.store.close()
        self.redis.close()


def runtime_for(
    app: Celery, worker_name: str = "", agents: Collection[str] | None = None
) -> WorkerRuntime:
    """The runtime in ``app``'s context, built on first use (threads share it) for ``agents``
    (the agent types the worker serves; default: every one of the registry)."""
    context = context_of(app)
    runtime = context.runtime
    if runtime is None:
        with context.lock:
            runtime = context.runtime
            if runtime is None:
                settings = context.settings
                runtime = WorkerRuntime.build(settings, context.registry, worker_name, agents)
                runtime.pipeline_acks = acks_in_pipelines(
                    settings.broker, settings.redis_url, app.conf.broker_transport_options or {}
                )
                context.runtime = runtime
    return runtime
