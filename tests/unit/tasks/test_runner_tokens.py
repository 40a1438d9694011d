"""Token counts in the step runner: a stream's own counts are kept, labelled by how they were
counted (store, metrics, traces); the budget's check before a call uses the model's tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
from prometheus_client import REGISTRY
from tokenizers import Tokenizer, models, pre_tokenizers

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.inference.chat import ChatRequest, Delta
from app.inference.tokens import TokenCounter
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures.backends import ReplyList

REPLY = ["It", " rains", " in", " Oslo."]


class Streamed(ReplyList):
    """Streams a reply in pieces, then the call's counts when it has them."""

    def __init__(self, counts: Delta | None) -> None:
        super().__init__()
        self.counts = counts

    def stream(self, request: ChatRequest, **_route) -> Iterator[Delta]:
        self.requests.append(request)
        yield from (Delta(piece) for piece in REPLY)
        if self.counts is not None:
            yield self.counts


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


@pytest.fixture
def bytes_tokenizer(tmp_path: Path) -> Path:
    """One token per byte: counts far above the words estimate."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def sample(name: str, agent: str, counted: str) -> float:
    labels = {"agent": agent, "counted": counted, "tenant": "default"}
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run_streamed(store: SessionStore, agent: str, counts: Delta | None) -> None:
    registry = AgentRegistry([AgentSpec(name=agent)])
    backend = Streamed(counts)
    runner = StepRunner(
        Settings(), registry, store, fakeredis.FakeRedis(), {"triton": backend}, "w1"
    )
    result = runner.run_step(StepMessage("run", agent, 0, "weather?", stream=True))
    assert result.outcome is Outcome.DONE


def test_a_streams_counts_are_the_steps_and_labelled_so(store: SessionStore) -> None:
    counts = Delta(tokens_in=31, tokens_out=9, counted="server")
    run_streamed(store, "tok_server", counts)
    step = store.load_run("run").steps[0]
    assert (step.model_output, step.tokens_in, step.tokens_out) == ("It rains in Oslo.", 31, 9)
    assert sample("agentq_tokens_in_total", "tok_server", "server") == 31
    assert sample("agentq_tokens_out_total", "tok_server", "server") == 9
    assert sample("agentq_tokens_out_total", "tok_server", "estimate") == 0


def test_a_tokenizers_counts_are_labelled_tokenizer(store: SessionStore) -> None:
    run_streamed(store, "tok_tokenizer", Delta(tokens_in=40, tokens_out=6, counted="tokenizer"))
    assert store.load_run("run").steps[0].tokens_in == 40
    assert sample("agentq_tokens_in_total", "tok_tokenizer", "tokenizer") == 40


def test_a_stream_without_counts_is_an_estimate_labelled_so(store: SessionStore) -> None:
    run_streamed(store, "tok_none", None)
    step = store.load_run("run").steps[0]
    assert step.tokens_out == 4  # the words of "It rains in Oslo."
    assert sample("agentq_tokens_out_total", "tok_none", "estimate") == 4


def test_the_check_before_a_call_counts_with_the_models_tokenizer(
    store: SessionStore, bytes_tokenizer: Path
) -> None:
    settings = Settings(triton={"tokenizers": {"bytes": str(bytes_tokenizer)}})
    registry = AgentRegistry(
        [AgentSpec(name="bytes_agent", model="bytes"), AgentSpec(name="words_agent", model="w")]
    )
    backend = Streamed(Delta(tokens_in=1, tokens_out=1, counted="server"))
    redis = fakeredis.FakeRedis()
    runner = StepRunner(settings, registry, store, redis, {"triton": backend}, "w1")

    def run(run_id: str, agent: str, budget: dict[str, int] | None = None):
        return runner.run_step(
            StepMessage(run_id, agent, 0, "weather?", stream=True, budget=budget)
        )

    assert run("r0", "words_agent").outcome is Outcome.DONE
    turns, params = backend.requests[0].messages, backend.requests[0].params
    budget = {"max_tokens_in": backend.requests[0].estimated_tokens() + 5}
    # The same turns fit as words (no tokenizer for model "w") but not as bytes.
    assert run("r1", "words_agent", budget).outcome is Outcome.DONE
    stopped = run("r2", "bytes_agent", budget)
    assert stopped.error_type == "budget_exceeded" and "input token budget" in stopped.reason
    counter = TokenCounter("triton", {"bytes": bytes_tokenizer})
    prompt, _ = counter.request_tokens(ChatRequest(turns, params, model="bytes"))
    assert f"the next prompt has {prompt})" in stopped.reason
    assert len(backend.requests) == 2  # the bytes agent's model was never called
