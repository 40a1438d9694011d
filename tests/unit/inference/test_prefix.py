"""The prefix index's pure parts: the canonical conversation, its chained block hashes, the
per-process index, and the pool placing a session's turns with them (in-process replicas)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.config import Strategy
from app.inference.backend import ChatRequest, GenerationParams, Message, ToolCall
from app.inference.chat import ToolSchema
from app.inference.prefix import LocalPrefixIndex, PrefixIndex, chain_hashes, conversation_text
from tests.fixtures.backends import Clock, Server, make_pool

PARAMS = GenerationParams(max_tokens=8)
SYSTEM = Message("system", "You plan data-pipeline checks. " * 20)
SEARCH = ToolSchema("search", "Search the docs.", {"type": "object", "properties": {}})


def chat(*turns: str, tools: tuple[ToolSchema, ...] = (), model: str | None = None) -> ChatRequest:
    messages = [SYSTEM]
    for i, text in enumerate(turns):
        messages.append(Message("user" if i % 2 == 0 else "assistant", text))
    return ChatRequest(tuple(messages), PARAMS, tools, model)


def test_a_grown_conversation_extends_the_chain_of_the_earlier_one() -> None:
    first = chain_hashes(chat("What failed last night? " * 10), 64)
    second = chain_hashes(chat("What failed last night? " * 10, "The orders job.", "Why?"), 64)
    assert len(first) >= 5 and second[: len(first)] == first and len(second) > len(first)


def test_block_hashes_cover_everything_before_them() -> None:
    # Same last block text, different beginning: a different hash (a chain, not a set).
    a = chain_hashes(chat("x" * 300), 64)
    b = chain_hashes(
        ChatRequest((Message("system", "other"), Message("user", "x" * 300)), PARAMS), 64
    )
    assert not set(a) & set(b)


def test_tools_model_and_tool_calls_are_part_of_the_prefix() -> None:
    plain = chain_hashes(chat("hello " * 50), 64)
    assert chain_hashes(chat("hello " * 50, tools=(SEARCH,)), 64)[0] != plain[0]
    assert chain_hashes(chat("hello " * 50, model="other"), 64)[0] != plain[0]
    call = Message("assistant", "", (ToolCall("c1", "search", {"q": "x"}),))
    answer = Message("tool", '{"hits": 0}', tool_call_id="c1", name="search")
    text = conversation_text(ChatRequest((SYSTEM, call, answer), PARAMS))
    assert '"search",{"q":"x"}' in text and '"c1","search"' in text


def test_a_conversation_shorter_than_a_block_has_no_hashes() -> None:
    assert chain_hashes(ChatRequest.of_prompt("hi", PARAMS), 256) == []


@given(st.lists(st.text(max_size=80), min_size=1, max_size=8), st.integers(16, 128))
def test_chains_are_deterministic_and_prefix_closed(turns: list[str], block: int) -> None:
    whole = chain_hashes(chat(*turns), block)
    assert chain_hashes(chat(*turns), block) == whole
    for n in range(1, len(turns)):
        part = chain_hashes(chat(*turns[:n]), block)
        assert whole[: len(part)] == part


def test_local_index_counts_leading_blocks_forgets_after_ttl_and_caps() -> None:
    clock = Clock()
    index = LocalPrefixIndex(ttl_s=10, max_blocks=4, clock=lambda: clock.now)
    index.record(["h1", "h2", "h3"], "a")
    index.record(["h1"], "b")
    assert index.match(["h1", "h2", "h3", "h4"], ["a", "b", "c"]) == {"a": 3, "b": 1, "c": 0}
    assert index.match(["h2", "h3"], ["a"]) == {"a": 2}  # any run of hashes, from its start
    clock.now = 11
    assert index.match(["h1"], ["a", "b"]) == {"a": 0, "b": 0}
    index.record(["x1", "x2", "x3", "x4", "x5"], "a")
    assert len(index) == 4  # least recently sent dropped first
    assert index.match(["x1", "x2"], ["a"]) == {"a": 0}


def test_without_redis_the_index_is_this_process_own() -> None:
    index = PrefixIndex(None, "openai")
    index.record(["h1", "h2"], "a")
    assert index.match(["h1", "h2"], ["a", "b"]) == {"a": 2, "b": 0}


def session(i: int, *turns: str) -> ChatRequest:
    """Turns of session ``i``, whose first user turn is its own (a document, a task)."""
    return chat(f"Session {i}: summarise the nightly load of table t{i}. " * 3, *turns)


def test_the_pool_sends_each_session_back_to_the_replica_of_its_first_turn() -> None:
    servers = [Server(name) for name in "abc"]
    pool, _ = make_pool(*servers, strategy=Strategy.PREFIX, prefix_block_chars=32)
    first = {i: pool.generate(session(i)).replica for i in range(6)}
    for i in range(6):
        grown = session(i, "Done.", "And the orders table?")
        assert pool.generate(grown).replica == first[i]
    # Round robin moves a session's turns whatever they hold.
    rr, _ = make_pool(Server("a"), Server("b"), prefix_block_chars=32)
    assert len({rr.generate(session(0, *["ok"] * n)).replica for n in range(2)}) == 2


def test_a_shared_prefix_does_not_pile_every_call_onto_one_replica() -> None:
    # Every session shares the system prompt, which the index saw on replica "a" only: calls
    # go there until it is twice as loaded as "b" (max_imbalance 1), then to "b".
    pool, _ = make_pool(
        Server("a"), Server("b"), strategy=Strategy.PREFIX, prefix_block_chars=32,
        prefix_max_imbalance=1,
    )  # fmt: skip
    pool.generate(chat("warm-up"))
    open_streams = [pool.stream(session(i)) for i in range(6)]
    for stream in open_streams:
        next(stream)  # each holds its replica until read to the end or closed
    in_flight = {s.name: s.in_flight for s in pool.status()}
    assert in_flight["b"] > 0 and abs(in_flight["a"] - in_flight["b"]) <= 2
    for stream in open_streams:
        stream.close()
    assert all(s.in_flight == 0 for s in pool.status())
