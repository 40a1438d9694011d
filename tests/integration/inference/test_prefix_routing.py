"""Prefix-aware routing on two real engine replicas (llama-cpp-python's OpenAI server on
SmolLM2, whose prompt cache reuses a conversation's evaluated prefix): a session's next turn
lands on the replica that served its first, also when another worker process's pool (a second
ReplicaPool sharing the index in Redis) places it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from app.config import InferenceSettings, Strategy
from app.inference.backend import ChatRequest, GenerationParams, Message
from app.inference.breaker import CircuitBreaker
from app.inference.openai_compat import OpenAICompatBackend
from app.inference.pool import Replica, ReplicaPool
from app.inference.prefix import PrefixIndex
from app.local.llama_server import LlamaServer
from tests.fixtures.llama_server import LLAMA_MODEL

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.integration

SETTINGS = InferenceSettings(strategy=Strategy.PREFIX)
SYSTEM = Message("system", "You are a data engineer. Answer in one short sentence.")
SESSIONS = 3


@pytest.fixture(scope="module")
def two_replicas(
    llama_openai: LlamaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LlamaServer]]:
    """The session's server and a second one on the same model."""
    log = tmp_path_factory.mktemp("llama-second") / "llama-server.log"
    with LlamaServer(alias=LLAMA_MODEL, cache=True, log_path=log) as second:
        yield [llama_openai, second]


def pool_over(servers: list[LlamaServer], client: redis.Redis) -> ReplicaPool:
    """A worker process's pool: its own clients, the index shared through ``client``."""
    replicas = [
        Replica(s.base_url, OpenAICompatBackend(s.base_url, LLAMA_MODEL), CircuitBreaker(3, 5))
        for s in servers
    ]
    return ReplicaPool(replicas, SETTINGS, kind="openai", prefix=PrefixIndex(client, "openai"))


def first_turn(i: int) -> list[Message]:
    table = f"orders_{i}"
    document = f"Table {table} has columns id, amount, region_{i}, created_at and status. " * 3
    return [SYSTEM, Message("user", f"{document}\nWhat should we check first in {table}?")]


def turn(messages: list[Message]) -> ChatRequest:
    return ChatRequest(tuple(messages), GenerationParams(max_tokens=4, temperature=0.0))


def next_turn(messages: list[Message], reply: str) -> list[Message]:
    return [*messages, Message("assistant", reply), Message("user", "And then?")]


def test_a_session_second_turn_lands_on_the_replica_of_its_first(
    two_replicas: list[LlamaServer], redis_client: redis.Redis
) -> None:
    pool = pool_over(two_replicas, redis_client)
    try:
        conversations = [first_turn(i) for i in range(SESSIONS)]
        firsts = [pool.generate(turn(c)) for c in conversations]
        assert {f.replica for f in firsts} == {s.base_url for s in two_replicas}  # spread
        # Interleaved as concurrent runs would be: round robin would move some of them.
        for conversation, first in zip(conversations, firsts, strict=True):
            second = pool.generate(turn(next_turn(conversation, first.text)))
            assert second.replica == first.replica
    finally:
        pool.close()


def test_two_worker_processes_agree_through_the_index_in_redis(
    two_replicas: list[LlamaServer], redis_client: redis.Redis
) -> None:
    one, two = pool_over(two_replicas, redis_client), pool_over(two_replicas, redis_client)
    try:
        conversations = [first_turn(10 + i) for i in range(2)]
        firsts = [one.generate(turn(c)) for c in conversations]
        assert len(two.prefix.local) == 0  # the second process has sent nothing itself
        for conversation, first in zip(conversations, firsts, strict=True):
            second = two.generate(turn(next_turn(conversation, first.text)))
            assert second.replica == first.replica
    finally:
        one.close()
        two.close()
