"""A worker's readiness names each model its agents use that Triton does not have."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.celery_ext.app import create_celery
from app.config import Settings, TritonSettings
from app.local.triton import TritonServer
from app.ops.health import WorkerHealth
from app.tasks.runtime import runtime_for
from tests.fixtures.triton import ALT_MODEL

pytestmark = pytest.mark.integration

AGENTS = AgentRegistry([AgentSpec(name="plain"), AgentSpec(name="second", model=ALT_MODEL)])


def readyz(settings: Settings, queues: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    """The /readyz answer of a worker of AGENTS on ``settings`` (consuming ``queues``)."""
    # A deadline a loaded test machine keeps (the default is 1 s).
    health = settings.health.model_copy(update={"check_timeout_s": 10.0})
    settings = settings.model_copy(update={"health": health})
    app = create_celery(settings, AGENTS)
    if queues:
        app.amqp.queues.select(queues)  # as -Q does
    runtime = runtime_for(app, "w1")  # built at the worker's start, before checks run
    worker = WorkerHealth(app, settings, "w1")
    try:
        status, _, body = worker.readyz()
        return status, json.loads(body)
    finally:
        worker.checks.close()
        runtime.close()


def on(settings: Settings, server: TritonServer) -> Settings:
    return settings.model_copy(update={"triton": TritonSettings(replicas=[server.replica()])})


def test_a_worker_is_not_ready_while_an_agents_model_is_missing(settings: Settings) -> None:
    status, body = readyz(settings)
    assert status == 503 and body["ready"] is False
    assert body["missing_models"] == {"triton": [ALT_MODEL]}
    check = body["checks"]["replicas.triton"]
    assert check["ok"] is False and f"missing models: {ALT_MODEL}" in check["detail"]
    assert all(c["ok"] for name, c in body["checks"].items() if name != "replicas.triton")


def test_a_worker_of_agents_whose_models_are_served_is_ready(
    settings: Settings, triton_two_models: TritonServer
) -> None:
    assert readyz(settings, ["agent.plain"])[0] == 200  # the other agent's model is not its own
    status, body = readyz(on(settings, triton_two_models))
    assert status == 200 and "missing_models" not in body
