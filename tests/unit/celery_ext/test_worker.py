"""A worker's own state as app.celery_ext.worker reads it."""

from __future__ import annotations

import platform
import socket
from types import SimpleNamespace

import pytest

from app.celery_ext.app import create_celery
from app.celery_ext.worker import cap_malloc_arenas, consumed_queues, node_name
from app.config import Settings


def test_consumed_queues_are_the_ones_the_worker_was_started_with() -> None:
    app = create_celery(Settings(_env_file=None))
    try:
        assert consumed_queues(app) == {"agent.research", "agent.coder"}  # no -Q: every queue
        app.amqp.queues.select(["agent.research"])  # what `celery worker -Q` does
        assert consumed_queues(app) == {"agent.research"}
    finally:
        app.close()


def test_node_names_expand_the_host_as_celery_worker_does() -> None:
    assert node_name("agentq-research@%h") == f"agentq-research@{socket.gethostname()}"
    assert node_name("w1@fixed") == "w1@fixed"


def test_a_worker_lacking_a_private_name_stops_at_start_with_one_line(monkeypatch) -> None:
    from kombu.transport import redis as kombu_redis

    from app.celery_ext.worker import InternalsCheck

    InternalsCheck(SimpleNamespace())  # the installed versions have everything
    monkeypatch.delattr(kombu_redis.Channel, "_q_for_pri")
    with pytest.raises(SystemExit) as stopped:  # what `celery worker` exits with, no traceback
        InternalsCheck(SimpleNamespace())
    message = str(stopped.value.code)
    assert message.startswith("agentq: this Celery ") and "\n" not in message
    assert "kombu.transport.redis:Channel._q_for_pri" in message


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_arenas_are_capped_on_glibc_and_left_alone_at_zero() -> None:
    assert cap_malloc_arenas(0) is False  # glibc's default stays
    assert cap_malloc_arenas(8) is True  # the default's cap on this machine's cores at least
