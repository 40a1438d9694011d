"""The results of deterministic tools, cached in Redis and shared by every run and worker.

A tool declared ``@tool(..., deterministic=True)`` answers the same arguments with the same
result, so its successful results are kept under its name, its ``version`` and the SHA-256 of
its validated arguments as canonical JSON (:func:`call_identity`): equivalent calls (an
argument left to its default, ``"3"`` coerced to ``3``, keys in another order) share an entry.
An entry lives ``cache_ttl_s`` (the tool's) or ``AGENTQ_CACHE__TOOL_TTL_S``.

Single-flight: identical calls at the same time run the tool once. The first takes a lock
(``SET NX PX`` with a token of its own, living the tool's deadline plus
``cache.lock_margin_s``), runs the tool, stores the result and releases the lock; the others
poll with backoff (10 ms growing to 100 ms) until the result is there. When the owner's call
fails, its waiters get the same error (a deterministic tool fails the same way again); the
error is not cached for later calls. When the owner dies, its lock expires and the next waiter
to look takes it and runs the tool. A waiter that has waited ``cache.tool_wait_s`` (default:
the lock's lifetime) for one flight runs the tool itself: no call waits for ever.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from app.agents.tools import ToolSpec
from app.config import CacheSettings
from app.constants import DEFAULT_TENANT, tool_cache_key
from app.errors import ToolError
from app.ops import metrics
from app.ops.redis_scripts import Script

CLAIM = Script("app.memory", "lua/tool_claim.lua")
FINISH = Script("app.memory", "lua/tool_finish.lua")

_FIRST_POLL_S = 0.01
_MAX_POLL_S = 0.1


def canonical_json(values: Any) -> str:
    """``values`` as canonical JSON: keys sorted, no spaces, pydantic types as JSON."""
    return json.dumps(
        to_jsonable_python(values), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def call_identity(spec: ToolSpec, values: dict[str, Any]) -> str:
    """What a call of ``spec`` with validated ``values`` is cached under:
    ``<tool>:<version>:<SHA-256 of the arguments' canonical JSON>``."""
    digest = hashlib.sha256(canonical_json(values).encode()).hexdigest()
    return f"{spec.name}:{spec.version}:{digest}"


class ToolCache:
    """Deterministic tools' results in Redis, with single-flight (see the module docstring)."""

    def __init__(
        self,
        redis: Any,
        settings: CacheSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self._sleep = sleep
        self._clock = clock

    def call(
        self,
        spec: ToolSpec,
        values: dict[str, Any],
        deadline_s: float,
        run: Callable[[], Any],
        tenant: str = DEFAULT_TENANT,
    ) -> Any:
        """The result of ``spec`` with validated ``values``: cached, or that of an identical
        call in flight, or ``run()``'s (stored for later calls when it succeeds).
        :class:`ToolError` when the call (this one or the one waited on) fails."""
        identity = call_identity(spec, values)
        # Only ``tenant``'s identical calls are shared.
        keys = [tool_cache_key(identity, part, tenant) for part in ("result", "lock", "error")]
        token = uuid.uuid4().hex
        lock_ms = int((deadline_s + self.settings.lock_margin_s) * 1000)
        wait_s = self.settings.tool_wait_s or lock_ms / 1000
        flight, started, pause, waited = "", self._clock(), _FIRST_POLL_S, False
        while True:
            kind, value = _pair(CLAIM(self.redis, keys, [token, lock_ms, flight]))
            if kind == "hit":
                metrics.tool_cache(spec.name, "waited" if waited else "hit")
                return json.loads(value)
            if kind == "error":
                metrics.tool_cache(spec.name, "waited")
                raise ToolError(value)
            if kind == "owner":
                metrics.tool_cache(spec.name, "takeover" if waited else "miss")
                return self._run(spec, keys, token, lock_ms, run)
            if value != flight:  # a new call in flight (the first, or a takeover): wait anew
                flight, started, pause = value, self._clock(), _FIRST_POLL_S
            elif self._clock() - started >= wait_s:
                metrics.tool_cache(spec.name, "wait_timeout")
                return self._run(spec, keys, token, lock_ms, run)
            waited = True
            self._sleep(pause * random.uniform(0.5, 1.0))  # jitter: waiters do not poll in step
            pause = min(pause * 1.5, _MAX_POLL_S)

    def _run(
        self, spec: ToolSpec, keys: list[str], token: str, lock_ms: int, run: Callable[[], Any]
    ) -> Any:
        """Run the tool as the call in flight: its result stored, its failure handed to its
        waiters, the lock released either way (left to expire only if this process dies)."""
        outcome, text, ttl_ms = "none", "", lock_ms
        try:
            result = run()
        except ToolError as exc:
            outcome, text = "error", str(exc)
            raise
        else:
            outcome, text = "result", json.dumps(result)
            ttl_ms = int((spec.cache_ttl_s or self.settings.tool_ttl_s) * 1000)
            return result
        finally:
            # Any other exception (Redis down, the worker stopping) just frees the lock.
            FINISH(self.redis, keys, [token, outcome, text, ttl_ms])


def _pair(reply: Any) -> tuple[str, str]:
    """A script's ``{kind, value}`` reply as text."""
    kind, value = reply
    return _text(kind), _text(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
