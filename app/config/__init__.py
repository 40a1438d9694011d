"""Settings: the one place configuration is read (env prefix ``AGENTQ_``, nested with ``__``).

Examples::

    AGENTQ_REDIS_URL=redis://127.0.0.1:6379/0
    AGENTQ_DATABASE_URL=postgresql+psycopg://user@db/agentq
    AGENTQ_TRITON__URLS='["triton-0:8001","triton-1:8001"]'
    AGENTQ_WORKER__CONCURRENCY=64
    AGENTQ_AGENTS_FILE=agents.yaml
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.config.inference import (
    InferenceSettings,
    OpenAISettings,
    ReplicaSettings,
    Strategy,
    StreamSettings,
    TritonSettings,
)
from app.config.memory import (
    AgentMemory,
    AgentRetention,
    CacheSettings,
    EmbeddingSettings,
    MemorySettings,
    RetentionSettings,
    SessionSettings,
)
from app.config.orchestration import OrchestrationSettings
from app.config.paths import REPO_ROOT
from app.config.sections import (
    ApiSettings,
    DeploySettings,
    DurabilitySettings,
    ExporterSettings,
    FlowerSettings,
    HealthSettings,
    LimitSettings,
    RedisTLSSettings,
    TracingSettings,
    WorkerSettings,
)
from app.config.sentinel import is_sentinel, parse_sentinel_url
from app.config.tenants import TenantSettings
from app.errors import ConfigurationError

__all__ = [
    "REPO_ROOT",
    "AgentMemory",
    "AgentRetention",
    "ApiSettings",
    "CacheSettings",
    "DeploySettings",
    "DurabilitySettings",
    "EmbeddingSettings",
    "ExporterSettings",
    "FlowerSettings",
    "HealthSettings",
    "InferenceSettings",
    "LimitSettings",
    "MemorySettings",
    "OpenAISettings",
    "OrchestrationSettings",
    "RedisTLSSettings",
    "ReplicaSettings",
    "RetentionSettings",
    "SecretFileSource",
    "SessionSettings",
    "Settings",
    "Strategy",
    "StreamSettings",
    "TenantSettings",
    "TracingSettings",
    "TritonSettings",
    "WorkerSettings",
    "child_env",
    "mask_url",
    "secret_file_var",
    "secret_value",
    "settings_env",
]


SECRET_FIELDS = (
    "redis_password",
    "redis_url",
    "broker_url",
    "result_backend",
    "database_url",
    "openai.api_key",
    "flower.basic_auth",
)
_URL_FIELDS = {"redis_url", "broker_url", "result_backend", "database_url"}


def secret_file_var(field: str) -> str:
    """The variable naming the file that holds ``field`` ("openai.api_key" -> ..._API_KEY_FILE)."""
    return "AGENTQ_" + field.replace(".", "__").upper() + "_FILE"


class SecretFileSource(PydanticBaseSettingsSource):
    """Secrets read from the files named by ``AGENTQ_<NAME>_FILE``; the variable itself wins."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every secret at once

    def __call__(self) -> dict[str, Any]:
        env = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for field in SECRET_FIELDS:
            var = secret_file_var(field)
            if var not in env or var.removesuffix("_FILE") in env:
                continue
            try:
                text = Path(env[var]).read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"{var}={env[var]}: cannot read the secret file ({exc.strerror}); "
                    f"mount the secret there or unset {var}"
                ) from None
            *parents, leaf = field.split(".")
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})
            # Secret files usually end with a newline that is not part of the secret.
            node[leaf] = text.removesuffix("\n").removesuffix("\r")
        return values


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages (each
    address of a ``sentinel://a;sentinel://b`` list)."""
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


class Settings(BaseSettings):
    """agentq configuration, read from the environment (prefix ``AGENTQ_``)."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTQ_",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # a rejected value may be a secret
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
    redis_sentinel_master: str = Field(
        default="mymaster",
        min_length=1,
        description="Name of the master the Sentinels watch (`sentinel monitor <name> ...`), "
        "for sentinel:// URLs (`sentinel://host1:26379/0;sentinel://host2:26379/0`).",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Password of every Redis connection whose URL has none "
        "(or AGENTQ_REDIS_PASSWORD_FILE); never logged.",
    )
    redis_tls: RedisTLSSettings = Field(
        default_factory=RedisTLSSettings, description="Certificates for rediss:// URLs."
    )
    redis_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Deadline of one connection to Redis (TLS included)."
    )
    redis_startup_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a starting worker waits for a Redis that refuses connections "
        "or is still loading its data (restarting, not up yet) before it gives up; a wrong "
        "password or TLS mismatch fails at once.",
    )
    redis_socket_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait for one Redis reply (above stream.read_block_ms).",
    )
    database_url: str = Field(
        default="sqlite:///agentq.sqlite3",
        description="SQLAlchemy URL of the session and step store (SQLite or PostgreSQL).",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Upgrade a session store whose schema is behind when a worker, the API or "
        "the demo starts (a current one costs one read; Alembic is imported only to upgrade); "
        "false: a worker refuses a schema that is behind, exit 4 (`agentq db upgrade` first).",
    )
    agents_file: Path | None = Field(
        default=None, description="YAML or TOML file declaring agent types (else the examples)."
    )
    include: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Python modules every process imports at start, so that their @tool "
        "functions and Agent(...) declarations register (`agentq worker --include` adds to "
        "them): comma-separated (`mytools,pkg.agents`) or a JSON list; the current directory "
        "is on the import path. Installed packages declare through the entry-point group "
        "`agentq.agents` instead.",
    )
    triton: TritonSettings = Field(default_factory=TritonSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    exporter: ExporterSettings = Field(default_factory=ExporterSettings)
    deploy: DeploySettings = Field(
        default_factory=DeploySettings, description="What `agentq manifests` generates."
    )
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    durability: DurabilitySettings = Field(default_factory=DurabilitySettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="What `agentq maintenance prune` removes from the session store.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines of workers, the exporter and Flower: Celery's text, or one JSON "
        "object per line with run_id, agent and step inside a step (AGENTQ_LOG_FORMAT).",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus_client's multiprocess folder (PROMETHEUS_MULTIPROC_DIR, read "
        "by prometheus_client too): set it when several processes share one /metrics.",
    )

    @field_validator("agents_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `AGENTQ_AGENTS_FILE=` (set but empty) means no file, not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("include", mode="before")
    @classmethod
    def _module_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "unix://", "sentinel://")
        if value is not None and not value.startswith(schemes):
            raise ValueError(
                f"expected a redis://, rediss:// or sentinel:// URL, got {mask_url(value)!r}"
            )
        if value is not None and is_sentinel(value):
            try:
                parse_sentinel_url(value)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secret_files = SecretFileSource(settings_cls)
        return init_settings, env_settings, secret_files, dotenv_settings, file_secret_settings

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs may carry passwords (SecretStr fields mask themselves).
        for name, value in super().__repr_args__():
            masked = name in _URL_FIELDS and isinstance(value, str)
            yield name, mask_url(value) if masked else value

    @property
    def broker(self) -> str:
        """The Celery broker URL in force."""
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        """The Celery result backend URL in force."""
        return self.result_backend or self.redis_url


def secret_value(var: str) -> str:
    """The secret in environment variable ``var``, else in the file ``var`` + ``_FILE`` names
    (an agent's MCP credentials); :class:`ConfigurationError` saying which to set."""
    if var in os.environ:
        return os.environ[var]
    path = os.environ.get(f"{var}_FILE")
    if path is None:
        raise ConfigurationError(f"secret {var} is not set: set {var} or {var}_FILE")
    try:
        return Path(path).read_text().removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise ConfigurationError(f"{var}_FILE={path}: cannot read it ({exc.strerror})") from None


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``overrides``, for a child process (worker, server)."""
    return {**os.environ, **overrides}


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``AGENTQ_`` variables that make a child process see the same services as ``settings``."""
    import json

    env = {
        "AGENTQ_REDIS_URL": settings.redis_url,
        "AGENTQ_BROKER_URL": settings.broker,
        "AGENTQ_RESULT_BACKEND": settings.backend,
        "AGENTQ_REDIS_SENTINEL_MASTER": settings.redis_sentinel_master,
        "AGENTQ_DATABASE_URL": settings.database_url,
        "AGENTQ_TRITON__URLS": json.dumps(settings.triton.urls),
        # How the models are spoken to: their chat templates and tokenizers (the local model's
        # folder is made at run time), and whether required calls are guided.
        "AGENTQ_TRITON__CHAT_TEMPLATES": json.dumps(settings.triton.chat_templates),
        "AGENTQ_TRITON__TOKENIZERS": json.dumps(settings.triton.tokenizers),
        "AGENTQ_TRITON__GUIDED_DECODING": json.dumps(settings.triton.guided_decoding),
        "AGENTQ_INFERENCE": settings.inference.model_dump_json(),
        "AGENTQ_STREAM": settings.stream.model_dump_json(),
        "AGENTQ_DURABILITY": settings.durability.model_dump_json(),
        "AGENTQ_SESSIONS": settings.sessions.model_dump_json(),
        "AGENTQ_CACHE": settings.cache.model_dump_json(),
        "AGENTQ_ORCHESTRATION": settings.orchestration.model_dump_json(),
        "AGENTQ_REDIS_TLS": settings.redis_tls.model_dump_json(),
        "AGENTQ_REDIS_CONNECT_TIMEOUT_S": str(settings.redis_connect_timeout_s),
        "AGENTQ_REDIS_SOCKET_TIMEOUT_S": str(settings.redis_socket_timeout_s),
    }
    if settings.redis_password is not None:
        env["AGENTQ_REDIS_PASSWORD"] = settings.redis_password.get_secret_value()
    if settings.triton.replicas:
        env["AGENTQ_TRITON__REPLICAS"] = json.dumps(
            [r.model_dump() for r in settings.triton.replicas]
        )
    openai = settings.openai
    if openai.replicas:
        env["AGENTQ_OPENAI__REPLICAS"] = json.dumps([r.model_dump() for r in openai.replicas])
        env["AGENTQ_OPENAI__MODEL"] = openai.model
        env["AGENTQ_OPENAI__TOKENIZERS"] = json.dumps(openai.tokenizers)
        env["AGENTQ_OPENAI__TIMEOUT_S"] = str(openai.timeout_s)
        if openai.api_key is not None:
            env["AGENTQ_OPENAI__API_KEY"] = openai.api_key.get_secret_value()
    if settings.agents_file:
        env["AGENTQ_AGENTS_FILE"] = str(settings.agents_file)
    if settings.include:
        env["AGENTQ_INCLUDE"] = ",".join(settings.include)
    return env
