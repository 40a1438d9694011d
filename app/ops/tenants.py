"""A tenant as a whole, for operators: its export (every session, run with its steps, and
memory, as JSON lines) and its deletion from everywhere agentq keeps it (SQL, the vector
store, Redis). Shared by ``agentq tenant`` and ``/v1/tenant``; no CLI or web framework here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from app.constants import KEY_PREFIX, history_keys, published_key, stream_key
from app.errors import ConfigurationError, TenantInUseError
from app.memory.prune import UNFINISHED, delete_runs
from app.memory.records import RunState
from app.memory.schema import runs, sessions
from app.memory.sessions import SessionStore
from app.ops.sessions import delete_keys, session_info

if TYPE_CHECKING:  # numpy loads with the memory store, not with the API or the CLI
    from app.memory.vectors import Memory, VectorStore

_PAGE = 500  # runs read or deleted per round trip


@dataclass(frozen=True, slots=True)
class TenantDeleted:
    """What deleting a tenant removed."""

    tenant: str
    runs: int = 0
    steps: int = 0
    sessions: int = 0
    memories: int = 0
    redis_keys: int = 0
    by_table: dict[str, int] = field(default_factory=dict)


def memories_of(store: SessionStore) -> VectorStore | None:
    """The long-term memory store beside ``store``; None on a PostgreSQL without pgvector,
    where no memory can have been stored."""
    from app.memory.vectors import vector_store

    try:
        return vector_store(store)
    except ConfigurationError:
        return None


def memory_json(memory: Memory) -> dict[str, Any]:
    """A memory as the export writes it (its embedding left out: the model can remake it)."""
    data = dataclasses.asdict(memory)
    data["created_at"] = memory.created_at.isoformat()
    return data


def cache_patterns(tenant: str) -> list[str]:
    """Redis key patterns of ``tenant``'s cached results and tool data: model replies, tool
    results, idempotency keys, embeddings and the key-value tools' keys (their builders in
    :mod:`app.constants`)."""
    # A tenant id needs no quoting (TENANT_PATTERN), and a glob's "{" is no special character.
    embeddings = f"{KEY_PREFIX}embedding:{{{tenant}|*"
    return [
        *(f"{KEY_PREFIX}{kind}:{tenant}:*" for kind in ("respcache", "toolcache", "idem", "kv")),
        embeddings,
    ]


def tenant_run_ids(store: SessionStore, tenant: str) -> Iterator[list[str]]:
    """The ids of ``tenant``'s runs, a page at a time (by id)."""
    after = ""
    while True:
        query = (
            select(runs.c.id)
            .where(runs.c.tenant == tenant, runs.c.id > after)
            .order_by(runs.c.id)
            .limit(_PAGE)
        )
        page = [row.id for row in store.read(partial(_all, query))]
        if not page:
            return
        yield page
        after = page[-1]


def tenant_session_ids(store: SessionStore, tenant: str) -> list[str]:
    """The ids of ``tenant``'s sessions."""
    query = select(sessions.c.id).where(sessions.c.tenant == tenant).order_by(sessions.c.id)
    return [row.id for row in store.read(lambda conn: conn.execute(query).all())]


def export_tenant(
    store: SessionStore,
    tenant: str,
    view: Callable[[RunState], dict[str, Any]],
    memories: VectorStore | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Everything of ``tenant``, one JSON object at a time: ``{"session": ...}`` for each
    session, ``{"run": ...}`` for each run as ``view`` shows it (steps, tool calls, tokens),
    ``{"memory": ...}`` for each long-term memory. ``progress(runs_done)`` as runs go."""
    for session_id in tenant_session_ids(store, tenant):
        info = session_info(store, session_id, tenant)
        if info is not None:  # deleted since it was listed
            yield {"session": info.to_json()}
    done = 0
    for page in tenant_run_ids(store, tenant):
        for run_id in page:
            state = store.load_run(run_id)
            if state is not None:
                yield {"run": view(state)}
        done += len(page)
        if progress is not None:
            progress(done)
    if memories is not None:
        for memory in memories.export(tenant):
            yield {"memory": memory_json(memory)}


def delete_tenant(
    store: SessionStore,
    redis: Any,
    tenant: str,
    *,
    force: bool = False,
    forget_result: Callable[[str], None] | None = None,
    memories: VectorStore | None = None,
) -> TenantDeleted:
    """Delete every run (with its steps, drafts, kept tool results and accepted record),
    session and memory of ``tenant``, and its token streams, markers, results, cached
    histories and cached replies, tool results, idempotency keys and embeddings in Redis.

    Raises :class:`TenantInUseError` while one of its runs is running or parked, unless
    ``force`` (that run's next step then finds no run and is dead-lettered). Runs still
    queued, not started, are not in the store: stop the tenant's producers first.
    """
    running = select(runs.c.id).where(runs.c.tenant == tenant, runs.c.status.in_(UNFINISHED))
    held = store.read(lambda conn: conn.execute(running.limit(3)).all())
    if held and not force:
        raise TenantInUseError(
            f"tenant {tenant!r} has running runs ({', '.join(r.id for r in held)} ...): wait for "
            "them to end, or delete with --force (their next step then finds no run)"
        )
    counts: dict[str, int] = {}
    keys: list[str] = []
    run_ids: list[str] = []
    for page in tenant_run_ids(store, tenant):
        with store.write() as conn:
            listed = conn.execute(
                select(runs.c.id, runs.c.next_step).where(runs.c.id.in_(page))
            ).all()
            for table, gone in delete_runs(conn, page).items():
                counts[table] = counts.get(table, 0) + gone
        for row in listed:
            keys.append(stream_key(tenant, row.id))
            keys.extend(published_key(row.id, step) for step in range(row.next_step + 1))
        run_ids.extend(page)
    session_ids = tenant_session_ids(store, tenant)
    with store.write() as conn:
        counts["sessions"] = conn.execute(
            delete(sessions).where(sessions.c.tenant == tenant)
        ).rowcount
    keys.extend(key for session_id in session_ids for key in history_keys(session_id))
    removed = delete_keys(redis, keys)
    for pattern in cache_patterns(tenant):
        removed += delete_keys(redis, list(redis.scan_iter(match=pattern, count=1000)))
    if forget_result is not None:
        for run_id in run_ids:
            forget_result(run_id)
    forgotten = memories.delete_tenant(tenant) if memories is not None else 0
    return TenantDeleted(
        tenant,
        runs=counts.get("runs", 0),
        steps=counts.get("steps", 0),
        sessions=counts["sessions"],
        memories=forgotten,
        redis_keys=removed,
        by_table=counts,
    )


def _all(query: Any, conn: Any) -> list[Any]:
    return list(conn.execute(query).all())
