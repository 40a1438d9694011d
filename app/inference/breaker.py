"""A circuit breaker per replica: a pure state machine, the clock passed in.

closed --(``failures_to_open`` consecutive failures)--> open --(cooldown over)--> probe due;
a probe of the replica's readiness that succeeds closes it, one that fails restarts the
cooldown. Calls go only to closed replicas, so a replica comes back only through its probe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass
class CircuitBreaker:
    """Counts consecutive failures of one replica; not thread-safe (the pool holds a lock)."""

    failures_to_open: int
    cooldown_s: float
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float | None = None

    @property
    def closed(self) -> bool:
        """Calls may go to the replica."""
        return self.state is BreakerState.CLOSED

    def probe_due(self, now: float) -> bool:
        """Open, and the cooldown is over: time to probe the replica's readiness."""
        return (
            self.state is BreakerState.OPEN
            and self.opened_at is not None
            and now - self.opened_at >= self.cooldown_s
        )

    def record_success(self) -> None:
        """A call was served (or the model answered with an error of its own)."""
        self.failures = 0

    def record_failure(self, now: float) -> bool:
        """A call found the replica unavailable; True when this failure opened the breaker."""
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self.failures_to_open:
            self._open(now)
            return True
        return False

    def record_probe(self, ready: bool, now: float) -> None:
        """The outcome of a readiness probe: close on success, start a new cooldown otherwise."""
        if ready:
            self.state, self.failures, self.opened_at = BreakerState.CLOSED, 0, None
        else:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at = BreakerState.OPEN, now
