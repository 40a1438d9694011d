"""A tenant as a whole on real Redis and SQLite / PostgreSQL: its export holds all of its
sessions and runs and nothing of another tenant's; its deletion removes them from SQL and
every Redis key of theirs (streams, markers, histories, cached replies, tool results,
idempotency keys), leaves the other tenant whole, and waits for its running runs."""

from __future__ import annotations

import pytest
import redis

from app.constants import (
    embedding_cache_key,
    history_keys,
    idempotency_key,
    kv_key,
    published_key,
    response_cache_key,
    stream_key,
    tool_cache_key,
)
from app.errors import SessionInUseError, TenantInUseError
from app.memory.history import claim_session
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.ops.sessions import delete_session
from app.ops.tenants import delete_tenant, export_tenant
from tests.fixtures.parked import park_on_signal

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex")


def seed(store: SessionStore, client: redis.Redis) -> dict[str, list[str]]:
    """Per tenant: two sessions of one finished run each, a run without a session, and the
    Redis keys its runs and caches leave; the keys, by tenant."""
    keys: dict[str, list[str]] = {}
    for tenant in TENANTS:
        made = keys[tenant] = []
        for n in (1, 2):
            run_id, session_id = f"{tenant}-r{n}", f"{tenant}-s{n}"
            assert claim_session(store, NewRun(run_id, "chat", "hi", session_id, tenant=tenant))
            final = StepRecord(0, StepKind.FINAL, f"answer for {tenant}")
            assert store.commit_step(run_id, final, final_answer="a", session_id=session_id)
            made += [stream_key(tenant, run_id), published_key(run_id, 0)]
            made += list(history_keys(session_id))
        alone = NewRun(f"{tenant}-r3", "chat", "solo", tenant=tenant)
        final = StepRecord(0, StepKind.FINAL, "solo")
        assert store.commit_step(alone.id, final, new_run=alone, final_answer="solo")
        made += [
            response_cache_key("d1", tenant),
            tool_cache_key("calc:1:abc", "result", tenant),
            idempotency_key(tenant, "chat", "k1"),
            embedding_cache_key(tenant, "minilm:1", "ab" * 32),
            kv_key("notes", tenant),
        ]
        for key in made:
            client.set(key, tenant)
    return keys


def test_an_export_holds_the_tenants_sessions_and_runs_only(
    sql_store: SessionStore, redis_client: redis.Redis
) -> None:
    seed(sql_store, redis_client)
    items = list(export_tenant(sql_store, "acme", lambda state: {"id": state.id}))
    sessions = [item["session"]["id"] for item in items if "session" in item]
    runs = [item["run"]["id"] for item in items if "run" in item]
    assert sessions == ["acme-s1", "acme-s2"]
    assert sorted(runs) == ["acme-r1", "acme-r2", "acme-r3"]
    assert not any("globex" in str(item) for item in items)


def test_deleting_a_tenant_removes_it_everywhere_and_leaves_the_other_whole(
    sql_store: SessionStore, redis_client: redis.Redis
) -> None:
    keys = seed(sql_store, redis_client)
    forgotten: list[str] = []
    deleted = delete_tenant(sql_store, redis_client, "acme", forget_result=forgotten.append)
    assert (deleted.runs, deleted.steps, deleted.sessions) == (3, 3, 2)
    assert deleted.redis_keys == len(keys["acme"])
    assert sorted(forgotten) == ["acme-r1", "acme-r2", "acme-r3"]
    assert not redis_client.exists(*keys["acme"])
    assert sql_store.list_runs(tenant="acme") == []
    assert redis_client.exists(*keys["globex"]) == len(keys["globex"])
    assert len(sql_store.list_runs(tenant="globex")) == 3
    again = delete_tenant(sql_store, redis_client, "acme")
    assert (again.runs, again.sessions, again.redis_keys) == (0, 0, 0)


def test_a_tenant_or_session_with_a_parked_run_is_kept_unless_forced(
    sql_store: SessionStore, redis_client: redis.Redis
) -> None:
    park_on_signal(sql_store, "parked", tenant="acme", session_id="acme-chat")
    with pytest.raises(TenantInUseError, match="parked"):
        delete_tenant(sql_store, redis_client, "acme")
    with pytest.raises(SessionInUseError, match="parked"):
        delete_session(sql_store, redis_client, "acme-chat")
    assert sql_store.load_run("parked") is not None
    assert delete_tenant(sql_store, redis_client, "acme", force=True).runs == 1


def test_a_tenant_with_a_running_run_is_kept_unless_forced(
    sql_store: SessionStore, redis_client: redis.Redis
) -> None:
    assert claim_session(sql_store, NewRun("live", "chat", "hi", "acme-live", tenant="acme"))
    with pytest.raises(TenantInUseError, match="live"):
        delete_tenant(sql_store, redis_client, "acme")
    assert sql_store.load_run("live") is not None
    assert delete_tenant(sql_store, redis_client, "acme", force=True).runs == 1
    assert sql_store.load_run("live") is None
