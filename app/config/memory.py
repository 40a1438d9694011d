"""Settings of long-term memory: its embedding model (``AGENTQ_EMBEDDING__*``), what is
stored and recalled (``AGENTQ_MEMORY__*``), and an agent type's own (``AgentSpec.memory``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Scope = Literal["agent", "session", "tenant"]
"""Whose memories: the agent type's (in any session of the tenant), the run's session's, or
every memory of the tenant. Always within the run's tenant."""


class EmbeddingSettings(BaseModel):
    """The embedding model of long-term memory and its Redis cache (docs/memory.md, "Long-term
    memory: the embedding model")."""

    backend: Literal["triton", "openai"] = Field(
        default="triton",
        description="triton: the `minilm` python model on Triton (gRPC, dynamic batching); "
        "openai: an OpenAI-compatible POST /v1/embeddings (vLLM, llama.cpp server).",
    )
    url: str | None = Field(
        default=None,
        description="Triton's gRPC address (host:port) or the OpenAI-compatible base URL "
        "(http://host:8000/v1); unset with triton: the first Triton replica's.",
    )
    model: str = Field(default="minilm", description="The embedding model's name on Triton.")
    tokenizer_model: str = Field(
        default="minilm_tokenizer",
        description="The Triton model that hands workers the embedding model's tokenizer.json "
        "(for cutting long documents into chunks).",
    )
    openai_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="The 'model' field of each /v1/embeddings request (backend openai).",
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token of the OpenAI-compatible server; never logged."
    )
    tokenizer_path: Path | None = Field(
        default=None,
        description="tokenizer.json of the model behind the OpenAI-compatible server (backend "
        "openai), for chunking; unset: the `embedding` extra's all-MiniLM-L6-v2 tokenizer.",
    )
    dim: int = Field(default=384, gt=0, description="Dimensions of one embedding.")
    max_tokens: int = Field(
        default=256,
        gt=2,
        description="Word pieces the model sees (special tokens included): a query is cut "
        "there, a stored document is chunked to fit.",
    )
    chunk_overlap_tokens: int = Field(
        default=32, ge=0, description="Word pieces two neighbouring chunks of a document share."
    )
    batch_size: int = Field(
        default=64,
        gt=0,
        description="Texts per request to the model (Triton's minilm takes up to 64 rows).",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Deadline of one embedding call.")
    cache: bool = Field(
        default=True,
        description="Keep embeddings in Redis by tenant, model version and SHA-256 of the text: "
        "a text embedded once is not sent to the model again while its entry lives.",
    )
    cache_ttl_s: int = Field(
        default=7 * 86_400, gt=0, description="How long a cached embedding lives."
    )


class MemorySettings(BaseModel):
    """Long-term memory: texts kept with their embeddings in the vector store beside the
    session store (docs/memory.md), written and read by the ``remember`` and ``recall`` tools
    and by automatic retrieval."""

    max_text_chars: int = Field(
        default=20_000,
        gt=0,
        description="Longest text one `remember` call stores; longer is refused (the model "
        "is told so).",
    )
    recall_k: int = Field(
        default=5, ge=1, le=100, description="Memories a `recall` call returns by default."
    )
    min_score: float = Field(
        default=0.2,
        ge=-1,
        le=1,
        description="Least cosine similarity a recalled memory needs (all-MiniLM-L6-v2: "
        "unrelated sentences score about 0-0.15, paraphrases 0.6-0.9).",
    )


class AgentMemory(BaseModel):
    """An agent type's long-term memory (``AgentSpec.memory``): automatic retrieval into its
    prompt, and the scope its ``remember`` / ``recall`` tools use when the model names none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recall: bool = Field(
        default=False,
        description="Before each model call, search memory with the run's input and put the "
        "best matches in the system prompt (within max_tokens).",
    )
    scope: Scope = Field(
        default="agent",
        description="Whose memories: agent (this agent type's, any session of the tenant), "
        "session (this run's session only) or tenant (all of the tenant's).",
    )
    k: int = Field(default=5, ge=1, le=50, description="Memories retrieved at most.")
    max_tokens: int = Field(
        default=256,
        ge=16,
        description="Token budget of the retrieved memories in the prompt: memories are added "
        "best first while they fit, the rest left out.",
    )
    min_score: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Least cosine similarity of a retrieved memory (default: memory.min_score).",
    )


class SessionSettings(BaseModel):
    """A session's conversation across runs: its history cache and its one-run-at-a-time rule
    (docs/memory.md)."""

    history_turns: int = Field(
        default=20,
        gt=0,
        description="Earlier runs of its session a run's prompt shows (their input and "
        "answer, the last ones that succeeded).",
    )
    history_cache: bool = Field(
        default=True,
        description="Read a session's history through a Redis cache in front of SQL (one SQL "
        "read per step fewer); off: every step reads it from SQL.",
    )
    history_cache_ttl_s: int = Field(
        default=3600, gt=0, description="How long a session's cached history is kept unread."
    )
    busy: Literal["requeue", "fail"] = Field(
        default="requeue",
        description="What a run does when another run of its session is running: 'requeue' "
        "(its first step comes back after busy_retry_s, until the session is free) or 'fail' "
        "(it fails at once with error type session_busy).",
    )
    busy_retry_s: float = Field(
        default=2.0, gt=0, description="Delay before a run waiting for its session tries again."
    )


class CacheSettings(BaseModel):
    """Caches that save model and tool cost: deterministic tools' results and deterministic
    model replies, in Redis (see docs/caches.md)."""

    tools: bool = Field(
        default=True,
        description="Cache the successful results of tools declared deterministic, shared by "
        "every run and worker, with single-flight (identical calls at once run the tool once).",
    )
    tool_ttl_s: int = Field(
        default=3600,
        gt=0,
        description="How long a cached tool result lives (a tool may declare its own cache_ttl_s).",
    )
    tool_wait_s: float | None = Field(
        default=None,
        gt=0,
        description="Longest a call waits for an identical call in flight elsewhere before it "
        "runs the tool itself (default: the tool's deadline plus lock_margin_s).",
    )
    lock_margin_s: float = Field(
        default=5.0,
        gt=0,
        description="Added to a tool's deadline for the lock of the call in flight: a lock whose "
        "owner died expires this long after the call would have been abandoned.",
    )
    responses: bool = Field(
        default=True,
        description="Allow the response cache of agents that turn it on (AgentSpec "
        "response_cache, used only at temperature 0); false: off for every agent.",
    )
    response_ttl_s: int = Field(
        default=86_400, gt=0, description="How long a cached model reply lives."
    )
    version_check_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a worker trusts the model version it learned (Triton's model "
        "metadata; an OpenAI-compatible server's last reply) before it asks again.",
    )


class RetentionSettings(BaseModel):
    """What `agentq maintenance prune` removes from the session store (docs/retention.md); an
    agent type's ``retention`` overrides the first three for its runs and sessions."""

    max_age_days: float = Field(
        default=30.0,
        gt=0,
        description="Days a finished run (succeeded or failed) is kept after it finished, with "
        "its steps; a running run is never pruned, nor a run its session's history still "
        "needs (its last turns, while the session is kept).",
    )
    max_runs: int | None = Field(
        default=None,
        gt=0,
        description="Most finished runs kept per agent type, the newest (older ones go even "
        "if younger than max_age_days; a session's history runs stay); unset: no count limit.",
    )
    session_idle_days: float = Field(
        default=90.0,
        gt=0,
        description="Days after its last run (started or finished) a session with no running "
        "run is removed whole, its runs and history with it.",
    )
    batch: int = Field(
        default=500,
        gt=0,
        description="Most runs (or sessions) one transaction of a prune pass deletes: short "
        "transactions that never hold the store for long.",
    )
    interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="Time between two passes of `agentq maintenance prune --every` when no "
        "interval is given (the compose service's loop).",
    )


class AgentRetention(BaseModel):
    """An agent type's own retention (``AgentSpec.retention``); unset fields: settings.retention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_age_days: float | None = Field(
        default=None, gt=0, description="Days a finished run is kept after it finished."
    )
    max_runs: int | None = Field(
        default=None, gt=0, description="Most finished runs of this agent type kept, the newest."
    )
    session_idle_days: float | None = Field(
        default=None,
        gt=0,
        description="Days after its last run a session of this agent type is removed whole.",
    )
