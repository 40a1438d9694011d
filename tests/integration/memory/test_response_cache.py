"""The response cache on real Redis and the real (scripted) Triton: a hit answers without a
server call; a new model version, other parameters or another prompt miss."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import CacheSettings, Settings, TritonSettings
from app.constants import DEFAULT_TENANT, stream_key
from app.inference.backend import ChatRequest, GenerationParams
from app.inference.echo import EchoBackend
from app.inference.factory import build_pools
from app.inference.openai_compat import OpenAICompatBackend
from app.local.triton import TritonServer, install_triton
from app.memory.response_cache import CACHED_REPLICA, ResponseCache
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures.openai_server import OpenAIServer
from tests.fixtures.triton import served_counts

DETERMINISTIC = AgentSpec(name="det", temperature=0, response_cache=True)


def ask(text: str = "hello there", max_tokens: int = 16) -> ChatRequest:
    return ChatRequest.of_prompt(text, GenerationParams(max_tokens=max_tokens, temperature=0))


@pytest.fixture
def triton_pool(settings: Settings):
    pool = build_pools(settings, kinds=["triton"])["triton"]
    yield pool
    pool.close()


def test_the_cache_is_off_by_default_and_only_for_an_explicit_temperature_0(redis_client):
    cache = ResponseCache(redis_client, CacheSettings())
    assert not cache.applies(AgentSpec(name="plain", temperature=0))
    assert not cache.applies(AgentSpec(name="warm", temperature=0.7, response_cache=True))
    assert not cache.applies(AgentSpec(name="default", response_cache=True))  # server's default
    assert cache.applies(DETERMINISTIC)
    off = ResponseCache(redis_client, CacheSettings(responses=False))
    assert not off.applies(DETERMINISTIC)


def test_an_identical_request_is_answered_without_calling_triton(
    redis_client, triton_pool, triton_server
):
    cache = ResponseCache(redis_client, CacheSettings())
    request = ask()
    before = served_counts(triton_server, ["ensemble"])["ensemble"]
    first, hit = cache.answer(
        DETERMINISTIC, triton_pool, request, lambda: triton_pool.generate(request)
    )
    assert not hit and first.text
    again, hit = cache.answer(
        DETERMINISTIC, triton_pool, request, lambda: triton_pool.generate(request)
    )
    assert hit
    assert (again.text, again.tool_calls, again.tokens_in, again.tokens_out) == (
        first.text,
        first.tool_calls,
        first.tokens_in,
        first.tokens_out,
    )
    assert again.replica == CACHED_REPLICA
    assert served_counts(triton_server, ["ensemble"])["ensemble"] == before + 1


def test_other_parameters_prompts_and_versions_miss(redis_client, triton_pool):
    cache = ResponseCache(redis_client, CacheSettings())

    def hit(request: ChatRequest, spec: AgentSpec = DETERMINISTIC) -> bool:
        return cache.answer(spec, triton_pool, request, lambda: triton_pool.generate(request))[1]

    assert not hit(ask())
    assert hit(ask())
    assert not hit(ask(max_tokens=17))
    assert not hit(ask("hello here"))
    pinned = DETERMINISTIC.model_copy(update={"model_version": "2025-01"})
    assert not hit(ask(), pinned)
    assert hit(ask(), pinned)
    assert not hit(ask(), DETERMINISTIC.model_copy(update={"model_version": "2025-02"}))


def test_a_new_model_version_on_the_server_misses(redis_client, settings, tmp_path: Path):
    # The same scripted models served as version 2: Triton's metadata says so.
    repo = tmp_path / "models"
    shutil.copytree(settings.triton.model_repository, repo)
    for model in ("ensemble", "ensemble_stream"):
        shutil.copytree(repo / model / "1", repo / model / "2")
    server = TritonServer(install_triton(settings.triton.home), repo, log_path=tmp_path / "t.log")
    server.start()
    try:
        cache = ResponseCache(redis_client, CacheSettings())
        request = ask()
        old = build_pools(settings, kinds=["triton"])["triton"]
        new_settings = settings.model_copy(
            update={"triton": TritonSettings(urls=[server.grpc_url])}
        )
        new = build_pools(new_settings, kinds=["triton"])["triton"]
        try:
            assert old.model_version(request) == "1/1"
            assert new.model_version(request) == "2/2"
            assert not cache.answer(DETERMINISTIC, old, request, lambda: old.generate(request))[1]
            fresh = ResponseCache(redis_client, CacheSettings())  # another worker, not the first
            assert not fresh.answer(DETERMINISTIC, new, request, lambda: new.generate(request))[1]
            assert fresh.answer(DETERMINISTIC, new, request, lambda: new.generate(request))[1]
        finally:
            old.close()
            new.close()
    finally:
        server.stop()


def tokens_out(agent: str) -> float:
    """``agentq_tokens_out_total`` of ``agent``, all ``counted`` labels together."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "agentq_tokens_out"
        for sample in family.samples
        if sample.name == "agentq_tokens_out_total" and sample.labels.get("agent") == agent
    )


def test_a_runner_answers_a_repeated_run_from_the_cache_and_relays_it(
    redis_client, store, settings
):
    spec = AgentSpec(name="det-echo", backend="echo", temperature=0, response_cache=True)
    runner = StepRunner(
        settings, AgentRegistry([spec]), store, redis_client, {"echo": EchoBackend()}, "w1"
    )
    assert runner.run_step(StepMessage("run-1", spec.name, 0, "same input")).outcome is Outcome.DONE
    generated = tokens_out(spec.name)
    assert generated > 0
    streamed = StepMessage("run-2", spec.name, 0, "same input", stream=True)
    assert runner.run_step(streamed).outcome is Outcome.DONE
    assert tokens_out(spec.name) == generated  # the hit generated nothing
    first, second = store.load_run("run-1"), store.load_run("run-2")
    assert first.answer == second.answer == "same input"
    assert first.steps[0].replica == "echo"
    assert second.steps[0].replica == CACHED_REPLICA
    relayed = b"".join(
        b"".join(f.values()) for _, f in redis_client.xrange(stream_key(DEFAULT_TENANT, "run-2"))
    )
    assert b"same input" in relayed


def test_an_openai_compatible_servers_version_is_learned_from_its_replies(redis_client):
    now = [0.0]
    cache = ResponseCache(redis_client, CacheSettings(version_check_s=30), clock=lambda: now[0])
    spec = AgentSpec(name="det-openai", backend="openai", temperature=0, response_cache=True)
    request = ask()
    with OpenAIServer() as server:
        backend = OpenAICompatBackend(server.base_url, server.model, timeout_s=30)
        try:

            def hit() -> bool:
                return cache.answer(spec, backend, request, lambda: backend.generate(request))[1]

            assert not hit()  # no version known yet: called, its reply's version learned
            assert hit()
            assert len(server.requests) == 1
            now[0] = 31.0  # the learned version is stale: asked again (the server is called)
            assert not hit()
            assert hit()
            assert len(server.requests) == 2
        finally:
            backend.close()
