"""The models each backend's pool is asked for: the agents' own, else the backend's default."""

from __future__ import annotations

from app.config import OpenAISettings, ReplicaSettings, Settings, TritonSettings
from app.inference.factory import agent_models, build_pools


def test_each_backend_gets_its_agents_models_and_its_default_for_agents_naming_none() -> None:
    settings = Settings(
        triton=TritonSettings(model="ensemble"),
        openai=OpenAISettings(model="gpt-x"),
    )
    agents = [
        ("triton", None),
        ("triton", "llama"),
        ("triton", "llama"),
        ("openai", None),
        ("openai", "qwen"),
        ("echo", None),
        ("echo", "anything"),
    ]
    assert agent_models(settings, agents) == {
        "triton": frozenset({"ensemble", "llama"}),
        "openai": frozenset({"gpt-x", "qwen"}),
        "echo": frozenset({"anything"}),
    }


def test_build_pools_hands_each_pool_its_models() -> None:
    settings = Settings(
        openai=OpenAISettings(replicas=[ReplicaSettings(url="http://127.0.0.1:9/v1")]),
    )
    pools = build_pools(settings, {"triton": {"ensemble", "llama"}, "openai": {"qwen"}})
    try:
        assert pools["triton"].models == {"ensemble", "llama"}
        assert pools["openai"].models == {"qwen"}
        assert pools["echo"].models == frozenset()
        assert pools["echo"].missing_models(["anything"]) == []
    finally:
        for pool in pools.values():
            pool.close()
