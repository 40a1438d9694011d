"""Per-step tool results in Redis: a step redelivered after a crash reuses its tool's result.

Keyed by (run id, step), so it never serves one run's result to another; entries expire
after :data:`app.constants.EFFECT_TTL_S`. Tools with side effects also dedupe the effect
itself (see ``counter_incr``), since a worker can die between the effect and this write.
"""

from __future__ import annotations

import json
from typing import Any

from app.constants import EFFECT_TTL_S, tool_result_key

_MISS = object()


class ToolResultCache:
    """Get and put one step's tool result."""

    def __init__(self, redis: Any, ttl_s: int = EFFECT_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    def get(self, run_id: str, step: int) -> Any:
        """The cached result, or :data:`MISS`."""
        raw = self.redis.get(tool_result_key(run_id, step))
        return _MISS if raw is None else json.loads(raw)

    def put(self, run_id: str, step: int, result: Any) -> None:
        """Remember ``result`` (JSON) for the step."""
        self.redis.set(tool_result_key(run_id, step), json.dumps(result), ex=self.ttl_s)


MISS: Any = _MISS
"""What :meth:`ToolResultCache.get` returns when the step has no cached result."""
