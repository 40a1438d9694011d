"""agentq: run AI agents at scale on Celery.

from app import Agent, submit, tool

@tool
def shout(text: str) -> str:
    '''Upper-case a text.'''
    return text.upper()

Agent("loud", system_prompt="You shout.", tools=[shout])
# served by `agentq worker --include <this module>`:
answer = submit("loud", "hello").get(timeout=30)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.agents.registry import Agent
    from app.agents.tools import ToolContext, tool
    from app.producer import submit, submit_many
    from app.producer.control import cancel, signal

__all__ = ["Agent", "ToolContext", "cancel", "signal", "submit", "submit_many", "tool"]

_HOMES = {
    "Agent": "app.agents.registry",
    "ToolContext": "app.agents.tools",
    "tool": "app.agents.tools",
    "submit": "app.producer",
    "submit_many": "app.producer",
    "signal": "app.producer.control",
    "cancel": "app.producer.control",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: a process that needs one module of app (a tool process, the
    # config reference) does not pay for Celery.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
