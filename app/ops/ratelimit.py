"""Rate limits shared by every process through Redis: one atomic script per request (GCRA,
on Redis's clock), keyed by a name such as ``api:<key id>``.

A limit of ``per_s`` requests a second with a ``burst`` lets ``burst`` requests through at
once, then one every ``1 / per_s`` seconds; a refused request is told how long to wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.constants import rate_limit_key
from app.errors import ConfigurationError
from app.ops.redis_scripts import Script

GCRA = Script("app.ops", "lua/gcra.lua")


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_s`` requests a second sustained, ``burst`` at once."""

    per_s: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ConfigurationError(f"a rate limit needs per_s > 0 and burst >= 1, not {self}")


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go ahead; if not, how long until one may; if so, how many more
    may go at once."""

    allowed: bool
    retry_after_s: float
    remaining: int


def take(client: Any, name: str, rate: Rate) -> Decision:
    """Count one request against limit ``name`` at ``rate`` on ``client``'s Redis."""
    allowed, wait_ms, remaining = GCRA(
        client, [rate_limit_key(name)], [f"{1000 / rate.per_s:.6f}", rate.burst]
    )
    return Decision(bool(allowed), int(wait_ms) / 1000, int(remaining))
