"""``sentinel://`` URLs: the Sentinels' addresses and the database and credentials of the
master they name, the same on every address (as kombu and Celery read them)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from app.errors import ConfigurationError

SENTINEL_PORT = 26379
_FORM = "sentinel://host1:port/db[;sentinel://host2:port/db...]"


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://``) rather than one Redis."""
    return url.startswith("sentinel://")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a ``sentinel://`` URL says: where the Sentinels are, and the database and
    credentials of the master they name."""

    sentinels: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url`` (:data:`_FORM`). Every address must name the same database and
    credentials (none: database 0, no password): kombu reconnects through the addresses in
    turn, each read with its own, and Celery's result backend reads the first's."""
    sentinels: list[tuple[str, int]] = []
    first: tuple[int, str | None, str | None] | None = None
    for index, part in enumerate(url.split(";")):
        try:
            parts = urlsplit(part)
            port = parts.port or SENTINEL_PORT
        except ValueError as exc:
            raise ConfigurationError(
                f"bad Sentinel address {index + 1} ({exc}): use {_FORM}"
            ) from None
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigurationError(f"Sentinel address {index + 1} is not {_FORM}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigurationError(f"Sentinel URL: the database must be a number, not {path!r}")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        here = (int(path or 0), user, password)
        first = first or here
        if here != first:
            raise ConfigurationError(
                f"Sentinel address {index + 1} names another database or password than the "
                "first: kombu reconnects through each address with its own; write the same "
                "on every one (or the password in AGENTQ_REDIS_PASSWORD)"
            )
        sentinels.append((parts.hostname, port))
    assert first is not None  # str.split gives at least one part
    return SentinelURL(sentinels, *first)
