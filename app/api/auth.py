"""Who is calling: the seam where API keys will plug in.

Every route depends on :func:`caller`. Until API keys exist (``agentq api key new``: scopes
submit, read, operate; a tenant), every caller is :data:`ANONYMOUS` with every scope, so
``agentq api`` belongs behind a private network or an authenticating proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

SCOPES = frozenset({"submit", "read", "operate"})


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity a request acts as: its key's id, scopes and tenant."""

    key_id: str | None
    scopes: frozenset[str]
    tenant: str | None = None


ANONYMOUS = Caller(key_id=None, scopes=SCOPES)


def caller() -> Caller:
    """The request's caller (a FastAPI dependency; API keys will replace its body)."""
    return ANONYMOUS
