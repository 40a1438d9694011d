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
