"""API keys in the session store, on SQLite and PostgreSQL: a key is shown once and kept as
its id and the SHA-256 of its secret; only the whole key verifies; a revoked key is refused
(within the lookup cache's window in a process that had looked it up)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.errors import InvalidInputError, UnknownScopeError
from app.memory.api_keys import ApiKeyStore, parse_scopes, split_key
from app.memory.engine import make_engine
from app.memory.schema import api_keys

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    url: str = request.getfixturevalue("pg_empty_url")
    return url


@pytest.fixture
def keys(database_url: str) -> Iterator[ApiKeyStore]:
    store = ApiKeyStore.from_url(database_url, migrate=True, cache_s=0)
    yield store
    store.close()


def test_a_new_key_verifies_and_only_its_secrets_hash_is_stored(
    keys: ApiKeyStore, database_url: str
) -> None:
    made, key = keys.create("read,submit", tenant="acme", name="ci")
    assert made.scopes == ("submit", "read")
    assert key.startswith(f"aq_{made.id}_")
    assert keys.verify(key) == made
    engine = make_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(select(api_keys)).one()
    engine.dispose()
    secret = key.removeprefix(f"aq_{made.id}_")
    assert row.hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(tuple(row))
    assert (row.tenant, row.name, row.scopes) == ("acme", "ci", ["submit", "read"])


def test_only_the_whole_key_verifies(keys: ApiKeyStore) -> None:
    made, key = keys.create(["read"])
    other, _ = keys.create(["read"])
    secret = key.removeprefix(f"aq_{made.id}_")
    for wrong in (
        key + "x",
        key[:-1],
        f"aq_{other.id}_{secret}",  # another key's id with this secret
        f"aq_nobody_{secret}",
        secret,
        f"aq_{made.id}",
        "",
    ):
        assert keys.verify(wrong) is None, wrong


def test_a_revoked_key_is_refused_and_listed_as_revoked(keys: ApiKeyStore) -> None:
    made, key = keys.create(["submit"])
    revoked = keys.revoke(made.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert keys.verify(key) is None
    assert keys.find(key) == revoked  # the secret matches: the API can say it was revoked
    assert keys.revoke(made.id) == revoked  # a second revocation keeps the first time
    assert keys.revoke("nobody") is None
    assert [(k.id, k.revoked_at) for k in keys.list()] == [(made.id, revoked.revoked_at)]


def test_a_process_refuses_a_key_revoked_elsewhere_once_its_cache_expires(
    keys: ApiKeyStore, database_url: str
) -> None:
    now = [0.0]
    api = ApiKeyStore(make_engine(database_url), cache_s=10, clock=lambda: now[0])
    try:
        made, key = keys.create(["read"])
        assert api.verify(key) == made
        keys.revoke(made.id)  # by another process: `agentq api key revoke`
        assert api.verify(key) == made  # looked up less than cache_s ago
        now[0] = 10.0
        assert api.verify(key) is None
    finally:
        api.close()


def test_keys_list_oldest_first_without_their_hashes(keys: ApiKeyStore) -> None:
    first, _ = keys.create(["read"], name="first")
    second, _ = keys.create(["operate"], tenant="t")
    listed = keys.list()
    assert listed == [first, second]
    assert set(listed[0].to_json()) == {
        "id",
        "name",
        "scopes",
        "tenant",
        "created_at",
        "revoked_at",
    }


@pytest.mark.parametrize("scopes", ["read,delete", "", " , ", ["admin"]])
def test_an_unknown_scope_is_refused(scopes: str | list[str]) -> None:
    with pytest.raises(UnknownScopeError, match="submit, read, operate"):
        parse_scopes(scopes)


def test_a_key_splits_into_its_id_and_secret() -> None:
    assert split_key("aq_abc_se_cr-et") == ("abc", "se_cr-et")
    assert split_key("ab_abc_secret") is None
    assert split_key("aq__secret") is None
    assert split_key("aq_abc_") is None


def test_a_key_for_a_tenant_that_is_no_tenant_id_is_refused(keys: ApiKeyStore) -> None:
    with pytest.raises(InvalidInputError, match="is not a tenant id"):
        keys.create("read", tenant="no spaces")
    assert keys.list() == []
