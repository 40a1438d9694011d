"""Celery routes as data: ``agentq.run_agent`` goes to the queue of its ``agent`` argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.constants import TASK_RUN_AGENT
from app.errors import InvalidInputError, UnknownAgentError


def queue_for_agent(queues: Mapping[str, str], agent: object) -> str:
    """The queue of ``agent`` in ``queues`` (agent type -> queue), or a typed error."""
    if not isinstance(agent, str) or not agent:
        raise InvalidInputError(f"'agent' must be a non-empty string, got {agent!r}")
    try:
        return queues[agent]
    except KeyError:
        known = ", ".join(sorted(queues)) or "none"
        raise UnknownAgentError(f"unknown agent {agent!r}; known agent types: {known}") from None


class AgentRouter:
    """Celery router: sends ``agentq.run_agent`` to the queue of its ``agent`` argument.

    Routes are data (the registry's agent -> queue table), so ``run_agent.delay(agent=...)``
    needs no ``queue=`` and an unknown agent fails at the producer.
    """

    def __init__(self, queues: Mapping[str, str]) -> None:
        self.queues = dict(queues)

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
        return {"queue": queue_for_agent(self.queues, agent)}
