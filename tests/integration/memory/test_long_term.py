"""Long-term memory with the real embedding model (all-MiniLM-L6-v2 on a real Triton) on the
embedded store and pgvector: a fact is found again by a question worded differently, within
its tenant and scope only; a long text is kept in chunks; a repeated tool call stores nothing
new; automatic retrieval puts the best memories in the prompt within its token budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.agents.memory_tools import scoped
from app.agents.registry import AgentSpec
from app.config import AgentMemory, Settings, TritonSettings
from app.memory.long_term import LazyMemory
from app.memory.migrate import migrate
from app.memory.records import NewRun
from app.memory.sessions import SessionStore
from app.tasks.recall import with_memories
from tests.fixtures.embedding import triton_embedding  # noqa: F401

pytestmark = pytest.mark.integration

FACT = "The user's favourite colour is teal."
QUESTION = "What colour does the user like?"


@pytest.fixture(params=["embedded", "pgvector"])
def memory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    triton_embedding,  # noqa: F811
) -> Iterator[LazyMemory]:
    if request.param == "embedded":
        url = f"sqlite:///{tmp_path / 'memories.sqlite3'}"
        migrate(url)
    else:
        url = str(request.getfixturevalue("pgvector_url"))
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=url,
        triton=TritonSettings(urls=[triton_embedding.grpc_url]),
    )
    store = SessionStore.from_url(url, migrate=False)
    lazy = LazyMemory(settings, store, redis_client)
    yield lazy
    lazy.close()
    store.close()


def test_a_fact_is_recalled_by_meaning_within_its_tenant_and_scope(memory: LazyMemory) -> None:
    long_term = memory.get()
    mine = scoped("agent", "assistant", None)
    long_term.remember("acme", FACT, agent=mine.agent, metadata=mine.where)
    long_term.remember(
        "acme", "Invoices go out on Tuesdays.", agent=mine.agent, metadata=mine.where
    )
    hits = long_term.recall("acme", QUESTION, agent=mine.agent, where=mine.where)
    assert hits[0].memory.text == FACT and hits[0].score > 0.5
    assert all(h.score < hits[0].score for h in hits[1:])
    assert long_term.recall("globex", QUESTION) == []  # another tenant: nothing
    other_agent = scoped("agent", "billing", None)
    assert (
        long_term.recall("acme", QUESTION, agent=other_agent.agent, where=other_agent.where) == []
    )
    tenant_wide = scoped("tenant", "assistant", None)
    assert long_term.recall("acme", QUESTION, where=tenant_wide.where) == []


def test_a_long_text_is_kept_in_chunks_and_a_repeated_call_adds_nothing(
    memory: LazyMemory,
) -> None:
    long_term = memory.get()
    filler = " ".join(f"Note {i} is about shipping schedules and pallets." for i in range(60))
    text = f"{filler} The warehouse door code is 4471."
    first = long_term.remember("acme", text, key="run-1:0:call-0")
    assert len(first) > 1  # past the model's 256 word pieces
    again = long_term.remember("acme", text, key="run-1:0:call-0")
    assert again == first
    exported = list(long_term.store.export("acme"))
    assert len(exported) == len(first)
    assert exported[0].metadata == {"chunk": 0, "chunks": len(first)}
    (best,) = long_term.recall("acme", "What is the door code of the warehouse?", k=1)
    assert "4471" in best.memory.text


def test_automatic_retrieval_puts_the_best_memories_in_the_prompt_within_its_budget(
    memory: LazyMemory,
) -> None:
    long_term = memory.get()
    place = scoped("agent", "assistant", None)
    for text in (FACT, "The user's dog is called Biscuit.", "Quarterly reports are due in May."):
        long_term.remember("acme", text, agent=place.agent, metadata=place.where)
    spec = AgentSpec(
        name="assistant",
        system_prompt="You help.",
        memory=AgentMemory(recall=True, k=3, max_tokens=40, min_score=0.3),
    )
    state = NewRun("r1", "assistant", QUESTION, tenant="acme").state()
    prompt = with_memories(memory, spec, state, lambda text: len(text.split()))
    assert prompt.startswith("You help.\n\n")
    assert f"- {FACT}" in prompt
    assert "Quarterly" not in prompt  # below min_score
    tight = spec.model_copy(update={"memory": AgentMemory(recall=True, max_tokens=16)})
    # 2 tokens a word: the header alone (9 words) is past 16 tokens, so nothing is added.
    assert with_memories(memory, tight, state, lambda text: 2 * len(text.split())) == "You help."
    theirs = NewRun("r2", "assistant", QUESTION, tenant="globex").state()
    assert with_memories(memory, spec, theirs, lambda text: len(text.split())) == "You help."
