"""agentq: run AI agents at scale on Celery.

from app import submit
answer = submit("research", "What is 6*7?").get(timeout=30)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.producer import submit, submit_many

__all__ = ["submit", "submit_many"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a process that needs one module of app (a tool process, the
    # config reference) does not pay for Celery.
    if name in __all__:
        import app.producer

        return getattr(app.producer, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
