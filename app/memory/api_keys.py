"""The HTTP run API's keys, kept in the session store: create, list, revoke, verify.

A key reads ``aq_<id>_<secret>``. The store keeps its id, the SHA-256 of its secret, its
scopes and tenant; the secret is shown once, when the key is created, and never stored.
Verifying a key looks its id up, compares digests in constant time and refuses a revoked key.
Lookups are kept in-process for ``cache_s`` so a request does not hit SQL: a key revoked
elsewhere is refused within that window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import DBAPIError

from app.constants import TENANT_PATTERN
from app.errors import InvalidInputError, UnknownScopeError
from app.memory.engine import make_engine
from app.memory.records import utc_now
from app.memory.schema import api_keys
from app.memory.sessions import store_error

SCOPES = ("submit", "read", "operate")
"""What a key may do: submit runs, read runs and their events, operate (replay, purge)."""

PREFIX = "aq_"
CACHE_S = 10.0
MAX_CACHED = 10_000
"""Lookups kept at most (unknown ids included, so guessed keys cannot grow the cache)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored, without its secret's hash."""

    id: str
    scopes: tuple[str, ...]
    tenant: str | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The key as ``agentq api key list --json`` prints it."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "tenant": self.tenant,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def parse_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """``scopes`` (a list, or names separated by commas) in :data:`SCOPES` order; raises
    :class:`UnknownScopeError` for a name not in it, or for none at all."""
    names = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    wanted = {name.strip() for name in names if name.strip()}
    unknown = sorted(wanted.difference(SCOPES))
    if unknown or not wanted:
        raise UnknownScopeError(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'}: "
            f"give one or more of {', '.join(SCOPES)}, separated by commas"
        )
    return tuple(scope for scope in SCOPES if scope in wanted)


def split_key(key: str) -> tuple[str, str] | None:
    """A key's (id, secret), or None when ``key`` is not of the form ``aq_<id>_<secret>``."""
    if not key.startswith(PREFIX):
        return None
    key_id, _, secret = key.removeprefix(PREFIX).partition("_")
    return (key_id, secret) if key_id and secret else None


def digest(secret: str) -> str:
    """The SHA-256 hex digest kept for ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Lookup:
    """A cached read of one id: its hash and key (both None: no such id)."""

    hash: str | None
    key: ApiKey | None
    expires: float


class ApiKeyStore:
    """The ``api_keys`` table on ``engine``; share one instance between a process's threads."""

    def __init__(
        self, engine: Engine, cache_s: float = CACHE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, _Lookup] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, migrate: bool, cache_s: float = CACHE_S) -> ApiKeyStore:
        """A store on ``url``; with ``migrate`` a schema that is behind is upgraded first."""
        engine = make_engine(url)
        if migrate:
            from app.memory.migrate import ensure_schema

            ensure_schema(engine, upgrade=True)
        return cls(engine, cache_s)

    def _run(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction; a database error becomes a :class:`StoreError`."""
        try:
            with self._engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc

    def create(
        self, scopes: str | Iterable[str], tenant: str | None = None, name: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key with ``scopes``: its record and the key itself (``aq_<id>_<secret>``),
        which nothing can show again. :class:`InvalidInputError` for a tenant that is no
        tenant id (runs of the key would be refused)."""
        if tenant is not None and re.fullmatch(TENANT_PATTERN, tenant) is None:
            raise InvalidInputError(
                f"tenant {tenant!r} is not a tenant id: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        key = ApiKey(secrets.token_hex(8), parse_scopes(scopes), tenant, name, utc_now())
        secret = secrets.token_urlsafe(32)
        row = {**_row(key), "hash": digest(secret)}
        self._run(lambda conn: conn.execute(insert(api_keys).values(row)))
        return key, f"{PREFIX}{key.id}_{secret}"

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        return [_key(row) for row in self._run(lambda conn: conn.execute(query).all())]

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke key ``key_id`` (a revoked key keeps its first revocation time); the key as
        it now stands, or None when there is none."""
        table = api_keys.c

        def revoke(conn: Connection) -> Any:
            conn.execute(
                update(api_keys)
                .where(table.id == key_id, table.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
            return conn.execute(select(api_keys).where(table.id == key_id)).one_or_none()

        row = self._run(revoke)
        self._cache.pop(key_id, None)
        return None if row is None else _key(row)

    def find(self, key: str) -> ApiKey | None:
        """The key whose secret ``key`` holds, revoked or not; None when there is none."""
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        found = self._lookup(key_id)
        if found.hash is None or not hmac.compare_digest(found.hash, digest(secret)):
            return None
        return found.key

    def verify(self, key: str) -> ApiKey | None:
        """The key ``key`` is, when it is one and not revoked."""
        found = self.find(key)
        return found if found is not None and found.revoked_at is None else None

    def _lookup(self, key_id: str) -> _Lookup:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            return cached
        query = select(api_keys).where(api_keys.c.id == key_id)
        row = self._run(lambda conn: conn.execute(query).one_or_none())
        found = _Lookup(row.hash if row else None, _key(row) if row else None, now + self._cache_s)
        if self._cache_s > 0:
            with self._lock:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.pop(next(iter(self._cache)))  # the oldest entry
                self._cache[key_id] = found
        return found

    def close(self) -> None:
        """Close the store's connections."""
        self._engine.dispose()


def _row(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "scopes": list(key.scopes),
        "tenant": key.tenant,
        "name": key.name,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def _key(row: Any) -> ApiKey:
    return ApiKey(row.id, tuple(row.scopes), row.tenant, row.name, row.created_at, row.revoked_at)
