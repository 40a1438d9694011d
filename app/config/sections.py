"""The sections of :class:`app.config.Settings`: one pydantic model per concern (those of
inference are in :mod:`app.config.inference`).

Each is read from ``AGENTQ_<SECTION>__<FIELD>``; see ``app/config/__init__.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class WorkerSettings(BaseModel):
    """How a worker process consumes its queues."""

    pool: str = Field(
        default="threads",
        description="Celery pool. Agent steps wait on the model, so threads keep many in flight.",
    )
    concurrency: int = Field(
        default=64,
        gt=0,
        description="Runs in flight per worker process (threads pool: one thread per run).",
    )
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
    task_events: bool = Field(
        default=False,
        description="Send Celery task events (needed by Flower and `celery events`); each "
        "costs the worker a Redis publish per step, so they are off by default as in Celery.",
    )
    log_each_step: bool = Field(
        default=False,
        description="Keep Celery's INFO lines for each step message received and finished "
        "(two per step; costly on a busy worker).",
    )
    result_expires_s: int = Field(
        default=86_400, gt=0, description="How long run results stay in the result backend."
    )
    envelope_body_max_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Longest message body a worker accepts (its text, base64 included); a "
        "longer one is quarantined to the dead letters. Must exceed the largest run input.",
    )
    envelope_headers_max_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="Largest message headers a worker accepts (as compact JSON); larger ones "
        "are quarantined to the dead letters.",
    )
    quarantine_keep_bytes: int = Field(
        default=4096,
        gt=0,
        description="Bytes of a quarantined message kept in its dead letter (with its full "
        "length): enough to see what sent it, bounded so that junk cannot fill Redis.",
    )
    agents: str | None = Field(
        default=None,
        description="Comma-separated agent types `agentq worker` consumes when --agents is not "
        "given (a container's AGENTQ_WORKER__AGENTS, e.g. 'research'); unset: every type.",
    )
    tool_threads: int = Field(
        default=8,
        gt=0,
        description="Threads per worker process that run in-process tools: also the most "
        "abandoned calls (past their deadline) that may still be running; once all are "
        "taken, a tool call waits for one until its deadline.",
    )
    tool_processes: int = Field(
        default=2,
        gt=0,
        description="Subprocesses per worker process that run CPU-heavy tools (started on "
        "first use; one killed at a deadline is replaced).",
    )
    malloc_arenas: int = Field(
        default=2,
        ge=0,
        description="glibc malloc arenas a worker process may use (0: glibc's default, eight "
        "per core). Pool threads that allocate at once each get an arena, kept for good: with "
        "64 runs in flight, two hold about 8 MiB less. Ignored where malloc is not glibc's.",
    )


class LimitSettings(BaseModel):
    """Defaults that an agent's own spec may override."""

    max_input_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest accepted run input, JSON-encoded."
    )
    max_steps: int = Field(default=8, gt=0, description="Default step budget of an agent.")
    max_tokens_in: int | None = Field(
        default=None, gt=0, description="Default prompt-token budget of a run (None: unlimited)."
    )
    max_tokens_out: int | None = Field(
        default=None, gt=0, description="Default generated-token budget of a run (None: unlimited)."
    )
    max_tool_calls: int | None = Field(
        default=None, ge=0, description="Default tool-call budget of a run (None: unlimited)."
    )
    max_wall_time_s: float | None = Field(
        default=None, gt=0, description="Default wall-time budget of a run (None: unlimited)."
    )
    idempotency_window_s: int = Field(
        default=86_400,
        gt=0,
        description="How long a submit's idempotency key keeps returning the run it created.",
    )
    queued_ttl_s: int = Field(
        default=7 * 86_400,
        gt=0,
        description="How long a submitted run is listed as queued before its first step is "
        "stored (GET /v1/runs, agentq runs); an older entry is dropped from the listing, not "
        "its message from the queue.",
    )
    tool_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Default deadline of one tool call (a tool may declare its own): past it "
        "the call is abandoned, or its subprocess killed, and the model gets a tool error.",
    )
    tool_result_max_bytes: int = Field(
        default=16 * 1024,
        gt=0,
        description="Largest tool result, JSON-encoded, committed and shown to the model; a "
        "larger one is cut to this size and marked '[truncated: N of M bytes]'.",
    )
    tool_memory_mb: int = Field(
        default=1024,
        ge=64,
        description="Address-space limit (RLIMIT_AS) of each subprocess that runs CPU-heavy tools.",
    )


class HealthSettings(BaseModel):
    """A worker's HTTP endpoints: /livez, /readyz and /metrics."""

    enabled: bool = Field(default=True, description="Serve the endpoints from each worker.")
    host: str = Field(default="0.0.0.0", description="Address the endpoints listen on.")
    port: int = Field(
        default=9540,
        ge=0,
        le=65535,
        description="Port of the endpoints (0: a free port, logged at start; a port in use "
        "also falls back to a free one, so several workers can share a machine).",
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, description="How often the worker's event loop stamps its heartbeat."
    )
    heartbeat_misses: int = Field(
        default=5,
        ge=1,
        description="/livez fails once the heartbeat is this many intervals old (event loop "
        "wedged).",
    )
    step_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="/livez fails once a step has run worker.step_timeout_s plus this long "
        "(a thread wedged in a step).",
    )
    check_timeout_s: float = Field(
        default=1.0, gt=0, description="Deadline of each /readyz check (Redis, store, replicas)."
    )
    cache_s: float = Field(
        default=1.0,
        ge=0,
        description="/readyz and the replica gauges reuse a check's result this long, so a "
        "scrape storm cannot hammer the model servers.",
    )


class ExporterSettings(BaseModel):
    """``agentq exporter``: cluster-wide backlog gauges for Prometheus and KEDA."""

    host: str = Field(default="0.0.0.0", description="Address the exporter listens on.")
    port: int = Field(default=9541, ge=0, le=65535, description="Port of the exporter's /metrics.")
    redis_timeout_s: float = Field(
        default=2.0, gt=0, description="Deadline of the Redis reads behind one scrape."
    )


class ApiSettings(BaseModel):
    """``agentq api``: the HTTP run API (submit, read, follow runs), served by uvicorn."""

    host: str = Field(
        default="127.0.0.1",
        description="Address the API listens on (0.0.0.0 in a container behind a Service).",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="Port of the API.")
    workers: int = Field(
        default=1, gt=0, description="uvicorn worker processes (each serves every route)."
    )
    keepalive_s: float = Field(
        default=15.0,
        gt=0,
        description="An event stream with nothing to send writes a comment this often, so "
        "proxies keep the connection open.",
    )
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often the events of a run without a token stream are read from the "
        "session store.",
    )
    shutdown_timeout_s: int = Field(
        default=10,
        gt=0,
        description="On SIGTERM, how long open requests (event streams) may finish.",
    )
    auth: Literal["keys", "none"] = Field(
        default="keys",
        description="keys: every request needs an API key (`agentq api key new`) with the "
        "route's scope; none: every caller acts with every scope, unlimited (local "
        "development only).",
    )
    key_cache_s: float = Field(
        default=10.0,
        ge=0,
        description="How long each API process keeps a key it looked up; a revoked key is "
        "refused within this long.",
    )
    rate_limit_per_s: float = Field(
        default=0.0,
        ge=0,
        description="Requests a second each API key may make, counted in Redis across every "
        "API process (0: no limit); over it, 429 with Retry-After.",
    )
    rate_limit_burst: int = Field(
        default=20,
        ge=1,
        description="Requests a key may make at once, before rate_limit_per_s spaces them out.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Origins whose browser pages may call the API, e.g. ["https://app.example"]; '
        "empty: no CORS headers (browsers let only the API's own origin call it).",
    )


class FlowerSettings(BaseModel):
    """``agentq flower``: Flower on the broker, behind HTTP basic auth."""

    basic_auth: SecretStr | None = Field(
        default=None,
        description="'user:password' Flower requires (or AGENTQ_FLOWER__BASIC_AUTH_FILE); "
        "Flower refuses to start without it. Never logged nor put on a command line.",
    )
    address: str = Field(
        default="127.0.0.1",
        description="Address Flower listens on (0.0.0.0 in a container behind a Service).",
    )
    port: int = Field(default=5555, ge=0, le=65535, description="Port of Flower's UI and API.")
    url_prefix: str | None = Field(
        default=None, description="Path prefix when Flower sits behind a proxy, e.g. 'flower'."
    )
    enable_events: bool = Field(
        default=True,
        description="Broadcast enable_events to the workers every 5 s, so workers started "
        "without AGENTQ_WORKER__TASK_EVENTS send task events too (from the next broadcast on).",
    )
    max_tasks: int = Field(
        default=100_000,
        gt=0,
        description="Tasks (one per step) Flower keeps in memory; older ones are forgotten.",
    )
    purge_offline_workers_s: int | None = Field(
        default=600,
        gt=0,
        description="Forget workers offline this long (autoscaled workers come and go).",
    )


class DurabilitySettings(BaseModel):
    """What survives a Redis that loses writes: accepted runs, and runs recovered from SQL
    (docs/durability.md)."""

    accepted: Literal["sql", "redis"] = Field(
        default="sql",
        description="What a submit writes before it tells the caller a run is accepted: "
        "'sql' records the run in the session store first (it survives any loss of Redis "
        "data: recovery publishes its first message again), 'redis' only pushes its message "
        "(faster; a run Redis loses before a worker starts it is lost).",
    )
    recovery: bool = Field(
        default=True,
        description="Workers run recovery passes: runs whose next message Redis lost are "
        "published again (`agentq maintenance recover` does one pass, for a CronJob).",
    )
    recovery_interval_s: float = Field(
        default=30.0, gt=0, description="Time between two recovery passes of a worker."
    )
    recovery_grace_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a run must not have moved (no step committed, or not started "
        "since it was accepted) before recovery looks for its message.",
    )
    recovery_batch: int = Field(
        default=500, gt=0, description="Most runs one recovery pass looks at, oldest first."
    )


class TracingSettings(BaseModel):
    """OpenTelemetry spans from submit through each step to the model and tool calls."""

    exporter: Literal["none", "console", "otlp"] = Field(
        default="none",
        description="Where spans go: nowhere (tracing off, no overhead), the console "
        "(JSON, one span per line) or an OTLP/HTTP collector. Needs the [otel] extra.",
    )
    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces",
        description="OTLP/HTTP traces endpoint of the collector (exporter 'otlp').",
    )
    service_name: str = Field(default="agentq", description="service.name of the spans' resource.")
    console_file: Path | None = Field(
        default=None,
        description="Exporter 'console': append the spans to this file instead of stdout.",
    )


class RedisTLSSettings(BaseModel):
    """TLS for ``rediss://`` URLs: broker, result backend and every Redis client."""

    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed the Redis server's certificate (unset: the system's).",
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate, for servers that require one."
    )
    key_file: Path | None = Field(default=None, description="Private key of cert_file.")
    verify: bool = Field(
        default=True,
        description="Verify the server's certificate and host name (turn off only to test).",
    )


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentq")
    except PackageNotFoundError:
        return "0.0.0"


class DeploySettings(BaseModel):
    """``agentq manifests``: what the generated Kubernetes and KEDA objects point at."""

    image: str = Field(default="agentq-worker", description="Worker image (without the tag).")
    triton_image: str = Field(
        default="agentq-triton", description="Triton + TensorRT-LLM image (without the tag)."
    )
    image_tag: str = Field(
        default_factory=_package_version,
        description="Tag of both images (default: the agentq version).",
    )
    redis_url: str = Field(
        default="redis://redis.agentq.svc.cluster.local:6379/0",
        description="Redis as seen from the cluster, without a password (that is in the "
        "Secret). A fully qualified host: KEDA's operator resolves it from its own namespace.",
    )
    prometheus_url: str = Field(
        default="http://prometheus.agentq.svc.cluster.local:9090",
        description="Prometheus queried by the alternative prometheus trigger (fully qualified).",
    )
    max_replicas: int = Field(
        default=10,
        gt=0,
        description="Most worker replicas per agent type (AgentSpec.max_replicas may override).",
    )
    backlog_per_replica: int | None = Field(
        default=None,
        gt=0,
        description="Backlog one worker replica should carry: the trigger's target (listLength, "
        "threshold). Default: worker.concurrency, a thread for every step waiting.",
    )
    activation_backlog: int = Field(
        default=0, ge=0, description="Backlog above which KEDA scales from zero."
    )
    polling_interval_s: int = Field(default=15, gt=0, description="KEDA's pollingInterval.")
    cooldown_s: int = Field(
        default=300, ge=0, description="KEDA's cooldownPeriod: idle time before scaling to zero."
    )
    worker_cpu: str = Field(default="500m", description="CPU request of a worker container.")
    worker_cpu_limit: str = Field(default="2", description="CPU limit of a worker container.")
    worker_memory: str = Field(
        default="512Mi", description="Memory request (and limit) of a worker container."
    )
    triton_gpus: int = Field(default=1, gt=0, description="GPUs per Triton replica.")
    triton_cpu: str = Field(default="4", description="CPU request of a Triton container.")
    triton_memory: str = Field(
        default="32Gi", description="Memory request (and limit) of a Triton container."
    )
    triton_min_replicas: int = Field(default=1, gt=0, description="Fewest Triton replicas.")
    triton_max_replicas: int = Field(default=4, gt=0, description="Most Triton replicas.")
    triton_queue_target: int = Field(
        default=8, gt=0, description="Requests waiting per Triton replica the HPA aims for."
    )
    triton_gpu_util_target: int = Field(
        default=80, gt=0, le=100, description="GPU utilisation (%) per replica the HPA aims for."
    )
    triton_startup_s: int = Field(
        default=1800,
        gt=0,
        description="Longest a Triton replica may take to load its engines before it is "
        "restarted (the startup probe's budget).",
    )
    triton_storage: str = Field(
        default="200Gi",
        description="Size of the volume holding the Hugging Face checkpoint and the engines "
        "(ReadWriteMany: every Triton replica mounts it).",
    )
    hf_model_id: str = Field(
        default="",
        description="Hugging Face Hub id the engine-build Job downloads when the volume holds "
        "no checkpoint yet (empty: copy one to the volume's hf/ folder first).",
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Node labels of the GPU node pool (GPU feature discovery sets this one).",
    )
