"""The worker side: the ``agentq.run_agent`` task and what a step needs around it.

runner (a step's I/O) and verdict (its pure decision), steps (message and outcome types),
handoff, leases, relay (tokens), dead_letters, admission, shutdown and runtime (the clients of a
worker process). ``run_agent`` is bound to the default app on first use.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.local import Proxy

from app.constants import TASK_RUN_AGENT


def register_tasks(app: Celery) -> None:
    """Define agentq's tasks on ``app``."""
    from app.tasks.run_agent import register_run_agent

    register_run_agent(app)


def _default_run_agent() -> Any:
    from app.celery_app import get_celery

    return get_celery().tasks[TASK_RUN_AGENT]


run_agent: Any = Proxy(_default_run_agent)
"""``run_agent.delay(agent="research", input="...", session_id="s1")`` on the default app."""
