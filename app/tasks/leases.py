"""Per-run lease in Redis: one worker at a time works on a run; the leases a process holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import NoScriptError

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


class HeldLeases:
    """The run leases one worker process holds (token -> run id): given back after a step, in
    the round trip that hands the run on, or all at once at shutdown, so a step handed back
    unfinished is taken at once elsewhere, not after its lease expires."""

    def __init__(self, lease: RunLease, worker_name: str = "") -> None:
        self.lease = lease
        self.worker_name = worker_name
        self.held: dict[str, str] = {}

    def take(self, run_id: str, ttl_s: float) -> str | None:
        """Take the run's lease for ``ttl_s``: its token, or None when another worker holds it."""
        token = f"{self.worker_name}:{uuid.uuid4().hex}"
        if not self.lease.acquire(run_id, token, ttl_s):
            return None
        self.held[token] = run_id
        return token

    def release(self, run_id: str, token: str) -> None:
        """Give back a lease held here (nothing if it was given back already)."""
        if self.held.pop(token, None) is not None:
            self.lease.release(run_id, token)

    @contextmanager
    def releasing(self, run_id: str, token: str, pipe: Any) -> Iterator[None]:
        """Queue the release of a held lease on Redis pipeline ``pipe``; it counts as given
        back once the block (which executes the pipeline) ends without an error."""
        self.lease.release_on(pipe, run_id, token)
        try:
            yield
        except NoScriptError:
            # Redis lost the script (restart, SCRIPT FLUSH); the pipeline's other commands ran.
            self.lease.release(run_id, token)
        self.held.pop(token, None)

    def release_all(self) -> int:
        """Give back every lease held here (worker shutdown); how many were still held."""
        released = 0
        for token, run_id in list(self.held.items()):
            released += bool(self.lease.release(run_id, token))
            self.held.pop(token, None)
        return released
