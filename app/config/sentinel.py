"""``sentinel://`` URLs: the Sentinels' addresses and the database and credentials of the
master they name, read as kombu and Celery read them (from the first address)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from app.errors import ConfigurationError

SENTINEL_PORT = 26379
_FORM = "sentinel://[:password@]host:port[;sentinel://host2:port2...]/db"


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://``) rather than one Redis."""
    return url.startswith("sentinel://")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a ``sentinel://`` URL says."""

    sentinels: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url`` (:data:`_FORM`). The database and password are the first address's, as
    kombu and Celery take them: a later address that names others is refused, since the
    broker, the result backend and agentq's clients would then disagree."""
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
        if first is None:
            first = here
        elif (path and here[0] != first[0]) or (password and here[1:] != first[1:]):
            raise ConfigurationError(
                f"Sentinel address {index + 1} names another database or password than the "
                "first: kombu and Celery use the first's; write them there only"
            )
        sentinels.append((parts.hostname, port))
    assert first is not None  # str.split gives at least one part
    return SentinelURL(sentinels, *first)
