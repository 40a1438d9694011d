"""The inference sections of :class:`app.config.Settings`: replicas and how calls are routed,
Triton, OpenAI-compatible servers and the token stream.

Each is read from ``AGENTQ_<SECTION>__<FIELD>``; see ``app/config/__init__.py``.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from app.config.paths import APP_DIR, REPO_ROOT

# The scripted models' tokenizer and chat template (models/tokenizers/scripted/build.py).
SCRIPTED_TOKENIZER = "models/tokenizers/scripted"


def _default_model_repository() -> Path:
    in_repo = REPO_ROOT / "models" / "scripted"
    if in_repo.is_dir():
        return in_repo
    return APP_DIR / "_models" / "scripted"


class ReplicaSettings(BaseModel):
    """One model server replica."""

    url: str = Field(
        description="Triton: gRPC endpoint host:port. OpenAI-compatible: base URL "
        "(http://host:8000/v1)."
    )
    health_url: str | None = Field(
        default=None,
        description="HTTP readiness URL probed before a tripped circuit breaker closes "
        "(Triton: http://host:8000/v2/health/ready; vLLM: http://host:8000/health). "
        "Unset: the client's own health call.",
    )
    metrics_url: str | None = Field(
        default=None,
        description="Prometheus endpoint giving the replica's queue depth "
        "(Triton: http://host:8002/metrics). Unset: the pool's own in-flight count stands in.",
    )
    weight: float = Field(default=1.0, gt=0, description="Share of calls under 'weighted'.")


class Strategy(StrEnum):
    """How the replica pool chooses a replica for a call."""

    SHORTEST_QUEUE = "shortest_queue"
    ROUND_ROBIN = "round_robin"
    LEAST_IN_FLIGHT = "least_in_flight"
    WEIGHTED = "weighted"
    RANDOM = "random"
    SESSION_AFFINITY = "session_affinity"
    PREFIX = "prefix"


SCORERS = ("prefix", "queue", "kv_cache", "running", "held")
"""What the prefix strategy scores replicas on (``InferenceSettings.scorers``)."""
DEFAULT_SCORERS = {"prefix": 2.0, "queue": 1.0, "kv_cache": 1.0, "running": 1.0, "held": 2.0}
DEFAULT_MAX_IMBALANCE = 1.0


class InferenceSettings(BaseModel):
    """Replica choice, failure handling and admission control, for every backend."""

    strategy: Strategy = Field(
        default=Strategy.SHORTEST_QUEUE, description="Replica choice for agents not listed below."
    )
    agent_strategies: dict[str, Strategy] = Field(
        default_factory=dict,
        description='Replica choice per agent type, e.g. {"coder": "session_affinity"}.',
    )
    attempts: int = Field(
        default=3,
        ge=1,
        description="Tries of one model call across replicas before the step "
        "is handed back to Celery for a later retry.",
    )
    backoff_s: float = Field(default=0.05, gt=0, description="First retry delay (doubles).")
    backoff_max_s: float = Field(default=1.0, gt=0, description="Longest delay between tries.")
    deadline_s: float = Field(
        default=120.0, gt=0, description="Deadline of one model call, all tries included."
    )
    breaker_failures: int = Field(
        default=3, ge=1, description="Consecutive failures that open a replica's circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        default=5.0, gt=0, description="Open breaker: wait before probing the replica's health."
    )
    metrics_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often replicas' metrics are scraped and open breakers probed.",
    )
    admission_max_depth: float | None = Field(
        default=None,
        ge=0,
        description="Stop taking runs from Redis while every replica's "
        "queue is deeper than this (None: never stop).",
    )
    admission_resume_depth: float | None = Field(
        default=None,
        ge=0,
        description="Take runs again once a replica's queue is at or below "
        "this (default: half of admission_max_depth).",
    )

    scorers: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SCORERS),
        description="Weights of the scores the prefix strategy adds up, each 0..1 per replica: "
        "prefix (share of the conversation's blocks the replica was last sent), queue "
        "(fewest requests waiting at the server plus open here), kv_cache (least KV cache in "
        "use), running (fewest requests running at the server), held (fewest blocks of "
        "conversations the router sent it within prefix_ttl_s: what its cache holds). A "
        "scorer left out weighs 0.",
    )
    prefix_block_chars: int = Field(
        default=256,
        ge=16,
        description="Size of one block of a conversation's text in the prefix index "
        "(about 64 tokens); a conversation shorter than one block is placed by load alone.",
    )
    prefix_max_imbalance: float = Field(
        default=DEFAULT_MAX_IMBALANCE,
        ge=0,
        description="A replica whose load (requests waiting at the server plus open here, "
        "plus the call to place) exceeds 1 + this times the least loaded one's loses its "
        "prefix score (1: twice), so a prefix every session shares, or one busy session, "
        "cannot pile every call onto one replica.",
    )
    prefix_ttl_s: int = Field(
        default=600,
        gt=0,
        description="How long the prefix index remembers where a block was sent (about "
        "how long an engine keeps an idle prefix cached).",
    )
    prefix_max_blocks: int = Field(
        default=200_000,
        gt=0,
        description="Blocks the prefix index holds per backend kind (about 100 bytes each "
        "in Redis); the least recently sent are forgotten first.",
    )

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorer(s) {unknown}; known: {', '.join(SCORERS)}")
        if any(w < 0 for w in value.values()):
            raise ValueError("scorer weights must be >= 0")
        return value

    def strategy_for(self, agent: str) -> Strategy:
        """The replica choice of ``agent``."""
        return self.agent_strategies.get(agent, self.strategy)

    def resume_depth(self) -> float | None:
        """Queue depth at which a paused worker takes runs again (None: admission is off)."""
        if self.admission_max_depth is None:
            return None
        if self.admission_resume_depth is not None:
            return min(self.admission_resume_depth, self.admission_max_depth)
        return self.admission_max_depth / 2


class TritonSettings(BaseModel):
    """Where the inference server is and how to call it."""

    urls: list[str] = Field(
        default=["127.0.0.1:8001"],
        description="gRPC endpoints (host:port) of the Triton replicas (shorthand for "
        "replicas without health or metrics URLs).",
    )
    replicas: list[ReplicaSettings] = Field(
        default_factory=list, description="Triton replicas in full; overrides urls when set."
    )
    model: str = Field(
        default="ensemble",
        description="Model for unary calls (TensorRT-LLM ensemble interface).",
    )
    stream_model: str = Field(
        default="ensemble_stream",
        description="Decoupled model for token streaming (same interface).",
    )
    stream_models: dict[str, str] = Field(
        default_factory=dict,
        description="Decoupled model streaming each other unary model an agent names (unary "
        "-> decoupled); a model not listed streams from itself. The default model streams "
        "from stream_model.",
    )
    tokenizers: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(("ensemble", "ensemble_stream"), SCRIPTED_TOKENIZER),
        description="Tokenizer of each model (model -> folder holding tokenizer.json, or the "
        "file; relative to the checkout or the installed package), counting the tokens of the "
        "prompt sent and the reply received for budgets, metrics and traces; a model not "
        "listed is counted by an estimate, labelled so. Default: the scripted models' own.",
    )
    chat_templates: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(("ensemble", "ensemble_stream"), SCRIPTED_TOKENIZER),
        description="Chat template of each model (model -> a tokenizer folder or its "
        "tokenizer_config.json, relative to the checkout or the installed package; or a "
        "built-in: hermes, lines). A model not listed gets 'lines' (System:/User: lines). "
        "Default: the scripted models' own tokenizer.",
    )
    guided_decoding: bool = Field(
        default=True,
        description="Send a reply that must call a tool (an agent's tool_choice required or "
        "a tool's name) the call's JSON Schema as guided decoding (guided_decoding_guide_type "
        "json_schema). TensorRT-LLM needs its tensorrt_llm model filled with "
        "guided_decoding_backend xgrammar (models/trtllm does); false for engines without it.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Deadline of one model call.")
    max_tokens: int = Field(default=512, gt=0, description="max_tokens sent with each call.")
    home: Path = Field(
        default=Path(sys.prefix) / "share" / "agentq" / "triton",
        description="Folder holding the tritonserver extracted from the nvidia-pytriton wheel "
        "(used by the demo and tests only).",
    )
    model_repository: Path = Field(
        default_factory=_default_model_repository,
        description="Model repository served by the local Triton (demo and tests); default: "
        "models/scripted in a checkout, else the copy installed with the package.",
    )

    def replica_list(self) -> list[ReplicaSettings]:
        """The replicas in force: ``replicas``, else one per entry of ``urls``."""
        return self.replicas or [ReplicaSettings(url=url) for url in self.urls]


class OpenAISettings(BaseModel):
    """An OpenAI-compatible chat completions server (NIM, vLLM), for agents with backend openai."""

    replicas: list[ReplicaSettings] = Field(
        default_factory=list, description="Servers, each with its base URL (http://host:8000/v1)."
    )
    model: str = Field(default="default", description="The 'model' field of each request.")
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token (AGENTQ_OPENAI__API_KEY); never logged."
    )
    tokenizers: dict[str, str] = Field(
        default_factory=dict,
        description="Tokenizer of each model (model -> folder holding tokenizer.json, or the "
        "file), for the budget's check before a call and replies the server reports no "
        "usage for; a model not listed is estimated there, labelled so.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Deadline of one model call.")


class StreamSettings(BaseModel):
    """Token relay from workers to producers through Redis Streams."""

    ttl_s: int = Field(
        default=600, gt=0, description="A run's stream expires this long after its last entry."
    )
    max_len: int = Field(
        default=10_000,
        gt=0,
        description="Entries kept per run's stream (older ones trimmed), "
        "so an absent reader costs bounded memory.",
    )
    read_block_ms: int = Field(
        default=1_000, gt=0, description="Longest a reader blocks in one XREAD."
    )
