"""Celery routes as data: ``agentq.run_agent`` goes to the queue of its ``agent`` argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.agents.registry import AgentRegistry
from app.constants import TASK_RUN_AGENT


class AgentRouter:
    """Celery router: sends ``agentq.run_agent`` to the queue of its ``agent`` argument.

    Routes are data (the registry's agent types and their queues), so
    ``run_agent.delay(agent=...)`` needs no ``queue=`` and an unknown agent fails at the producer.
    """

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def __call__(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        task: Any = None,
        **_: Any,
    ) -> dict[str, str] | None:
        if name != TASK_RUN_AGENT:
            return None
        agent = kwargs.get("agent") if kwargs else None
        if agent is None and args:
            agent = args[0]
        return {"queue": self.registry.spec(agent).queue_name}
