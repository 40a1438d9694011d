"""Names shared by producers, workers, operators and tests: queues, Redis keys, task names."""

from __future__ import annotations

from urllib.parse import quote

TASK_RUN_AGENT = "agentq.run_agent"
"""Stable task name; producers that do not import agentq ``send_task`` it."""

QUEUE_PREFIX = "agent."
"""An agent type's default queue is this prefix and its name (``AgentSpec.queue_name``)."""
KEY_PREFIX = "agentq:"

DEFAULT_TENANT = "default"
"""The tenant of a run, session or memory nobody named one for (an API key without a tenant,
``submit()`` without ``tenant=``, the CLI without ``--tenant``)."""
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
"""What a tenant id is: it goes into Redis keys and metric labels, hence the narrow alphabet."""
EMBEDDING_DIM = 384
"""Length of a long-term memory's embedding (all-MiniLM-L6-v2); the memories table's vector size."""


def lease_key(run_id: str) -> str:
    """Redis key holding the worker that currently owns a run."""
    return f"{KEY_PREFIX}lease:{run_id}"


def published_key(run_id: str, step: int) -> str:
    """Redis key set once the message for ``step`` of a run has been published."""
    return f"{KEY_PREFIX}published:{run_id}:{step}"


def cancel_key(run_id: str) -> str:
    """Set when a run's cancellation is asked for: a worker's in-flight model call for it stops
    (the session store's ``runs.cancel_requested_at`` is the record; this is the fast path)."""
    return f"{KEY_PREFIX}cancel:{run_id}"


CANCEL_CHANNEL = f"{KEY_PREFIX}cancel"
"""Redis pub/sub channel a cancellation publishes its run id on (workers abort its model call)."""


def stream_key(tenant: str, run_id: str) -> str:
    """Redis stream relaying a run's tokens to its producer: under its tenant, so a reader
    of another tenant, asking with its own, finds nothing."""
    return f"{KEY_PREFIX}stream:{tenant}:{run_id}"


DEAD_LETTERS = f"{KEY_PREFIX}dead"
"""Redis hash of dead-lettered runs: run id -> JSON object with its reason (dead_letters)."""
DEAD_LETTER_INDEX = f"{KEY_PREFIX}dead:index"
"""Redis sorted set of dead-lettered run ids by the time they failed."""
QUARANTINE_COUNTER = f"{KEY_PREFIX}dead:quarantined"
"""Redis counter numbering quarantined messages (their dead-letter ids: quarantine-<n>)."""


def kv_key(key: str, tenant: str = DEFAULT_TENANT) -> str:
    """Redis key behind the key-value tools: under the run's tenant, so tenants never share
    one."""
    return f"{KEY_PREFIX}kv:{tenant}:{key}"


# Prompt layout shared with the scripted model in models/ (it reads the same markers).
PROMPT_SYSTEM = "System: "
PROMPT_USER = "User: "
PROMPT_ASSISTANT = "Assistant: "
PROMPT_TOOL = "Tool: "


def effect_key(run_id: str, step: int, name: str) -> str:
    """Redis key marking that a step's side effect ``name`` happened (exactly-once tools)."""
    return f"{KEY_PREFIX}effect:{run_id}:{step}:{name}"


def idempotency_key(tenant: str, agent: str, key: str) -> str:
    """Redis key mapping a submit's idempotency key to the run it created (per tenant: two
    tenants' keys never meet)."""
    return f"{KEY_PREFIX}idem:{tenant}:{agent}:{key}"


QUEUED_RUNS = f"{KEY_PREFIX}queued:runs"
"""Redis hash of the queued runs (submitted, first step not stored) that have a session or
stream, or an id that does not hold its submit time: run id -> JSON (agent, session, stream,
submit time); see app.celery_ext.queued."""
QUEUED_AGENTS = f"{KEY_PREFIX}queued:agents"
"""Redis set of the agent types that have had queued runs (each has a :func:`queued_key`)."""


def queued_key(agent: str) -> str:
    """Redis list of an agent type's queued run ids in push order, the newest at the head (a
    name of its own: the sorted set an earlier version kept is left to expire)."""
    return f"{KEY_PREFIX}queued:ids:{agent}"


def rate_limit_key(name: str) -> str:
    """Redis key of rate limit ``name`` (:mod:`app.ops.ratelimit`), e.g. ``api:<key id>``."""
    return f"{KEY_PREFIX}rate:{name}"


EFFECT_TTL_S = 7 * 86_400
"""How long step-level dedup records live: longer than any retry or DLQ replay of a step."""


def prefix_key(pool: str, name: str) -> str:
    """Redis key of the prefix index of replica pool ``pool`` (a backend kind): ``lru``, a
    block's ``b:<hash>`` or a replica's ``held:<name>``. The hash tag keeps one pool's keys in
    one cluster slot."""
    return f"{KEY_PREFIX}prefix:{{{pool}}}:{name}"


def history_keys(session_id: str) -> tuple[str, str]:
    """Redis keys caching a session's history (:mod:`app.memory.history`): the session's
    history version the cache holds, and the list of its last runs' turns (JSON). The hash
    tag keeps both in one cluster slot."""
    return (
        f"{KEY_PREFIX}session:{{{session_id}}}:history:version",
        f"{KEY_PREFIX}session:{{{session_id}}}:history",
    )


def tool_cache_key(identity: str, part: str, tenant: str = DEFAULT_TENANT) -> str:
    """Redis key of a deterministic tool call's cache (:mod:`app.memory.tool_cache`):
    ``identity`` is ``<tool>:<version>:<arguments digest>``, ``part`` one of ``result``,
    ``lock`` (the call in flight) and ``error`` (its failure, for its waiters only). The hash
    tag keeps one call's keys in one cluster slot; a tenant's calls never meet another's."""
    return f"{KEY_PREFIX}toolcache:{tenant}:{{{identity}}}:{part}"


def response_cache_key(digest: str, tenant: str = DEFAULT_TENANT) -> str:
    """Redis key of a cached model reply (:mod:`app.memory.response_cache`): ``digest`` hashes
    the backend, model, model version, rendered prompt and generation parameters; under the
    tenant whose run asked, so a tenant is never answered from another's."""
    return f"{KEY_PREFIX}respcache:{tenant}:{digest}"


def embedding_cache_key(tenant: str, model_version: str, digest: str) -> str:
    """Redis key of a cached embedding (:mod:`app.inference.embeddings`): ``digest`` is the
    SHA-256 (hex) of the text. Tenant and model version are percent-quoted, so no ``:`` of
    theirs makes two keys alike; the hash tag keeps one tenant's embeddings of one model in one
    cluster slot, so a batch is one MGET."""
    scope = f"{quote(tenant, safe='')}|{quote(model_version, safe='')}"
    return f"{KEY_PREFIX}embedding:{{{scope}}}:{digest}"


PRUNED_ROWS = f"{KEY_PREFIX}pruned:rows"
"""Redis hash of rows `agentq maintenance prune` deleted: JSON [agent, table] -> count, ever
growing (the exporter serves it as a counter; app.ops.pruned)."""
PRUNED_LAST_PASS = f"{KEY_PREFIX}pruned:last"
"""Redis key: Unix time of the last prune pass that finished (app.ops.pruned)."""
