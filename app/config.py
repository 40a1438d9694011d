"""Settings: the one place configuration is read (env prefix ``AGENTQ_``, nested with ``__``).

Examples::

    AGENTQ_REDIS_URL=redis://127.0.0.1:6379/0
    AGENTQ_DATABASE_URL=postgresql+psycopg://user@db/agentq
    AGENTQ_TRITON__URLS='["triton-0:8001","triton-1:8001"]'
    AGENTQ_WORKER__CONCURRENCY=64
    AGENTQ_AGENTS_FILE=agents.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_model_repository() -> Path:
    in_repo = REPO_ROOT / "models" / "scripted"
    if in_repo.is_dir():
        return in_repo
    return Path(__file__).resolve().parent / "_models" / "scripted"


class TritonSettings(BaseModel):
    """Where the inference server is and how to call it."""

    urls: list[str] = Field(
        default=["127.0.0.1:8001"],
        description="gRPC endpoints (host:port) of the Triton replicas.",
    )
    model: str = Field(
        default="ensemble",
        description="Model for unary calls (TensorRT-LLM ensemble interface).",
    )
    stream_model: str = Field(
        default="ensemble_stream",
        description="Decoupled model for token streaming (same interface).",
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
        description="Model repository served by the local Triton (demo and tests).",
    )


class WorkerSettings(BaseModel):
    """How a worker process consumes its queues."""

    pool: str = Field(
        default="threads",
        description="Celery pool. Agent steps wait on the model, so threads keep many in flight.",
    )
    concurrency: int = Field(default=32, gt=0, description="Runs in flight per worker process.")
    visibility_timeout_s: int = Field(
        default=600,
        gt=0,
        description="Seconds before an unacknowledged step message is redelivered. "
        "Must exceed the longest step (not the longest run).",
    )
    step_timeout_s: int = Field(
        default=300,
        gt=0,
        description="Longest a single step may take; also the per-run lease's lifetime.",
    )
    lease_retry_s: float = Field(
        default=1.0,
        gt=0,
        description="Delay before a step message whose run is leased elsewhere is tried again.",
    )
    inference_retries: int = Field(
        default=8,
        ge=0,
        description="Times a step is retried while no model server answers, before the run fails.",
    )
    retry_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest delay between two retries of a step."
    )
    soft_shutdown_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long in-flight steps may finish (Celery soft shutdown).",
    )
    result_expires_s: int = Field(
        default=86_400, gt=0, description="How long run results stay in the result backend."
    )


class LimitSettings(BaseModel):
    """Defaults that an agent's own spec may override."""

    max_input_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest accepted run input, JSON-encoded."
    )
    max_steps: int = Field(default=8, gt=0, description="Default step budget of an agent.")
    tool_timeout_s: float = Field(default=30.0, gt=0, description="Default tool call deadline.")


class Settings(BaseSettings):
    """agentq configuration, read from the environment (prefix ``AGENTQ_``)."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTQ_", env_nested_delimiter="__", extra="ignore"
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for queues, leases, results and tool state.",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker URL; defaults to redis_url."
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend URL; defaults to redis_url."
    )
    database_url: str = Field(
        default="sqlite:///agentq.sqlite3",
        description="SQLAlchemy URL of the session and step store (SQLite or PostgreSQL).",
    )
    auto_migrate: bool = Field(
        default=True, description="Run the Alembic migrations when a worker or the demo starts."
    )
    agents_file: Path | None = Field(
        default=None, description="YAML or TOML file declaring agent types (else the examples)."
    )
    triton: TritonSettings = Field(default_factory=TritonSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis:// or rediss:// URL, got {value!r}")
        return value

    @property
    def broker(self) -> str:
        """The Celery broker URL in force."""
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        """The Celery result backend URL in force."""
        return self.result_backend or self.redis_url


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``overrides``, for a child process (worker, server)."""
    import os

    return {**os.environ, **overrides}


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``AGENTQ_`` variables that make a child process see the same services as ``settings``."""
    import json

    return {
        "AGENTQ_REDIS_URL": settings.redis_url,
        "AGENTQ_BROKER_URL": settings.broker,
        "AGENTQ_RESULT_BACKEND": settings.backend,
        "AGENTQ_DATABASE_URL": settings.database_url,
        "AGENTQ_TRITON__URLS": json.dumps(settings.triton.urls),
        **({"AGENTQ_AGENTS_FILE": str(settings.agents_file)} if settings.agents_file else {}),
    }
