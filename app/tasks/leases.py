"""Per-run lease in Redis: one worker at a time works on a run."""

from __future__ import annotations

from typing import Any

from app.constants import lease_key
from app.ops.redis_scripts import Script

# Deletes the key only if we still own it (see the file).
RELEASE = Script("app.tasks", "lua/release_lease.lua")


class RunLease:
    """``SET NX PX`` lease with owner-checked release."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def acquire(self, run_id: str, token: str, ttl_s: float) -> bool:
        """Take the run for ``ttl_s`` seconds; False when another worker holds it."""
        return bool(self.redis.set(lease_key(run_id), token, nx=True, px=int(ttl_s * 1000)))

    def release(self, run_id: str, token: str) -> bool:
        """Give the run back if ``token`` still holds it."""
        return bool(RELEASE(self.redis, [lease_key(run_id)], [token]))

    def release_on(self, pipe: Any, run_id: str, token: str) -> None:
        """Queue the release on ``pipe``: given back with the pipeline's other commands. If
        Redis lost the script, ``pipe.execute()`` raises ``NoScriptError`` (the other
        commands ran): call :meth:`release` then."""
        RELEASE.queue(pipe, [lease_key(run_id)], [token])

    def holder(self, run_id: str) -> str | None:
        """The token holding the run, if any."""
        value = self.redis.get(lease_key(run_id))
        return value.decode() if isinstance(value, bytes) else value
