"""Who is calling: the API key a request carries, what it may do, and its rate limit.

A request sends its key as ``Authorization: Bearer aq_<id>_<secret>``, or as cookie
:data:`COOKIE` (set by the run inspector's login page). Routes depend on :func:`require` with
their scope (submit, read, operate); :func:`caller` alone authenticates and counts the request
against the key's rate limit (``api.rate_limit_per_s``, shared by every API process through
Redis). With ``api.auth: none`` every caller is :data:`ANONYMOUS`: every scope, no limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from app.api.state import ApiState, api_state
from app.constants import DEFAULT_TENANT
from app.memory.api_keys import SCOPES, parse_scopes
from app.ops.ratelimit import Rate, take

COOKIE = "agentq_key"

_bearer = HTTPBearer(
    auto_error=False, description="An API key (`agentq api key new`): aq_<id>_<secret>."
)
_cookie = APIKeyCookie(
    name=COOKIE, auto_error=False, description="The same key, as the run inspector keeps it."
)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity a request acts as: its key's id, scopes and tenant (a key made without
    one, and every request with ``api.auth = none``, acts for the default tenant)."""

    key_id: str | None
    scopes: frozenset[str]
    tenant: str = DEFAULT_TENANT


ANONYMOUS = Caller(key_id=None, scopes=frozenset(SCOPES))


def unauthenticated(detail: str) -> HTTPException:
    """The 401 a request without a valid key gets (a problem, see :mod:`app.api.problems`)."""
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(api: ApiState, key: str | None) -> Caller:
    """The caller ``key`` (a whole ``aq_...`` key, or None) acts as; raises a 401
    :class:`HTTPException` when it is missing, unknown or revoked."""
    if api.settings.api.auth == "none":
        return ANONYMOUS
    if not key:
        raise unauthenticated(
            "no API key: send 'Authorization: Bearer <key>' (keys: agentq api key new)"
        )
    found = api.keys.find(key)
    if found is None:
        raise unauthenticated("unknown API key: check it, or make one with agentq api key new")
    if found.revoked_at is not None:
        raise unauthenticated(
            f"API key {found.id} was revoked at {found.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    return Caller(found.id, frozenset(found.scopes), found.tenant or DEFAULT_TENANT)


def limit(api: ApiState, who: Caller) -> None:
    """Count one request of ``who`` against its key's rate limit; raises a 429
    :class:`HTTPException` with Retry-After (whole seconds) when it is over."""
    per_s = api.settings.api.rate_limit_per_s
    if who.key_id is None or per_s == 0:
        return
    decision = take(api.redis, f"api:{who.key_id}", Rate(per_s, api.settings.api.rate_limit_burst))
    if not decision.allowed:
        wait_s = max(1, math.ceil(decision.retry_after_s))
        raise HTTPException(
            429,
            f"API key {who.key_id} is over its limit of {per_s:g} requests a second; "
            f"retry after {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )


def caller(
    api: Annotated[ApiState, Depends(api_state)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    cookie: Annotated[str | None, Security(_cookie)],
) -> Caller:
    """The request's caller, counted against its rate limit (a FastAPI dependency)."""
    who = authenticate(api, bearer.credentials if bearer else cookie)
    limit(api, who)
    return who


def require(scope: str) -> Callable[[Caller], Caller]:
    """A FastAPI dependency: the request's caller, refused with 403 unless its key has
    ``scope`` (submit, read or operate)."""
    parse_scopes([scope])  # an unknown scope fails at import, not per request

    def scoped(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if scope not in who.scopes:
            raise HTTPException(
                403,
                f"API key {who.key_id} lacks scope {scope!r} (it has "
                f"{', '.join(sorted(who.scopes)) or 'none'}); make a key with it",
            )
        return who

    return scoped
