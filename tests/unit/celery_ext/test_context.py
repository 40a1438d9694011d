import threading

import pytest
from celery import Celery

from app.agents.registry import AgentRegistry, AgentSpec
from app.celery_ext.app import create_celery
from app.celery_ext.context import context_of
from app.config import Settings
from app.errors import ConfigurationError
from app.tasks import runtime as runtime_module


def _app() -> Celery:
    settings = Settings(
        _env_file=None,
        redis_url="redis://127.0.0.1:6379/14",
        broker_url="redis://127.0.0.1:6379/15",
    )
    return create_celery(settings, AgentRegistry([AgentSpec(name="coder")]))


def test_create_celery_builds_the_context_context_of_finds():
    app = _app()
    context = context_of(app)
    assert context.registry.names == ["coder"]
    assert context.settings.redis_url == "redis://127.0.0.1:6379/14"
    assert context.runtime is None and context.health is None  # the worker builds them
    assert context_of(_app()) is not context  # one context per app


def test_clients_are_built_once_for_their_urls():
    context = context_of(_app())
    redis, broker = context.redis, context.broker
    assert context.redis is redis and context.broker is broker
    assert redis.connection_pool.connection_kwargs["db"] == 14
    assert broker.connection_pool.connection_kwargs["db"] == 15


def test_an_app_not_built_by_create_celery_has_no_context():
    with pytest.raises(ConfigurationError, match=r"build it with .*create_celery"):
        context_of(Celery("other", set_as_current=False))


def test_threads_share_one_runtime_built_once(monkeypatch):
    app = _app()
    built = []
    gate = threading.Event()

    class FakeRuntime:
        pipeline_acks = False

    def build(settings, registry, worker_name="", agents=None):
        gate.wait(5)  # every thread asks while the first build is still running
        built.append(worker_name)
        return FakeRuntime()

    monkeypatch.setattr(runtime_module.WorkerRuntime, "build", build)
    found = []
    threads = [
        threading.Thread(target=lambda: found.append(runtime_module.runtime_for(app, "w")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert built == ["w"]
    assert len(found) == 8 and all(r is context_of(app).runtime for r in found)
