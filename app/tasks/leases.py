"""Per-run lease in Redis: one worker at a time works on a run."""

from __future__ import annotations

from typing import Any

from app.constants import lease_key

# Delete the key only if we still own it, so an expired lease taken over by another
# worker is never released by the first one.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RunLease:
    """``SET NX PX`` lease with owner-checked release."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._release = redis.register_script(_RELEASE)

    def acquire(self, run_id: str, token: str, ttl_s: float) -> bool:
        """Take the run for ``ttl_s`` seconds; False when another worker holds it."""
        return bool(self.redis.set(lease_key(run_id), token, nx=True, px=int(ttl_s * 1000)))

    def release(self, run_id: str, token: str) -> bool:
        """Give the run back if ``token`` still holds it."""
        return bool(self._release(keys=[lease_key(run_id)], args=[token]))

    def release_on(self, pipe: Any, run_id: str, token: str) -> None:
        """Queue the release on ``pipe``: given back with the pipeline's other commands."""
        # EVAL, not EVALSHA: a pipeline with a Script first checks it is loaded (a round trip).
        pipe.eval(_RELEASE, 1, lease_key(run_id), token)

    def holder(self, run_id: str) -> str | None:
        """The token holding the run, if any."""
        value = self.redis.get(lease_key(run_id))
        return value.decode() if isinstance(value, bytes) else value
