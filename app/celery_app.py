"""The process-wide Celery app, built from the environment: what ``celery -A app.celery_app`` loads.

The factory is :func:`app.celery_ext.app.create_celery`; this module only keeps the default app.
"""

from __future__ import annotations

import threading

from celery import Celery

from app.celery_ext.app import create_celery
from app.config import Settings

_default: Celery | None = None
_default_lock = threading.Lock()


def get_celery() -> Celery:
    """The process-wide app built from the environment (what ``celery -A app.celery_app`` loads)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = create_celery(Settings())
            _default.set_default()
        return _default


def __getattr__(name: str) -> Celery:
    # `celery -A app.celery_app worker` looks up `app.celery_app.celery`; build it on first use.
    if name in {"celery", "app"}:
        return get_celery()
    raise AttributeError(name)
