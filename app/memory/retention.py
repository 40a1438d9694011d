"""Retention policy: how long each agent type's finished runs and idle sessions are kept, and
the report of what a prune pass removed. Pure: no I/O, the clock is passed in
(:mod:`app.memory.prune` deletes; docs/retention.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from app.config import AgentRetention, RetentionSettings

TABLES: Final = ("runs", "steps", "step_drafts", "tool_results", "accepted_runs", "sessions")
"""The tables a prune pass deletes from, in the order a report lists them."""

HISTORY_TURNS: Final = 20
"""Succeeded runs a session's history holds unless told (settings.sessions.history_turns)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """One agent type's retention, its own fields over the settings'."""

    max_age_days: float
    max_runs: int | None
    session_idle_days: float

    @classmethod
    def of(cls, settings: RetentionSettings, own: AgentRetention | None = None) -> Policy:
        """``own``'s fields where set, else ``settings``'."""
        mine = own.model_dump(exclude_none=True) if own is not None else {}
        return cls(
            max_age_days=mine.get("max_age_days", settings.max_age_days),
            max_runs=mine.get("max_runs", settings.max_runs),
            session_idle_days=mine.get("session_idle_days", settings.session_idle_days),
        )

    def runs_before(self, now: datetime) -> datetime:
        """A finished run that finished before this is old enough to go."""
        return now - timedelta(days=self.max_age_days)

    def sessions_before(self, now: datetime) -> datetime:
        """A session whose last run started and finished before this is idle."""
        return now - timedelta(days=self.session_idle_days)


def policies(
    settings: RetentionSettings, overrides: Mapping[str, AgentRetention], agents: Iterable[str]
) -> dict[str, Policy]:
    """The policy of each of ``agents`` (sorted): its override (an agent type's ``retention``)
    over ``settings``; an agent type no longer declared gets the settings'."""
    return {agent: Policy.of(settings, overrides.get(agent)) for agent in sorted(set(agents))}


@dataclass(slots=True)
class PruneReport:
    """Rows a pass removed (or would remove: ``dry_run``), by agent type and table; a row is
    counted under the agent type whose policy removed it (a session's runs: the session's)."""

    now: datetime
    dry_run: bool
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    transactions: int = 0
    seconds: float = 0.0

    def add(self, agent: str, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (table -> rows) under ``agent``."""
        for table, count in counts.items():
            if count:
                key = (agent, table)
                self.rows[key] = self.rows.get(key, 0) + count

    def total(self, table: str) -> int:
        """Rows of ``table`` removed, every agent type together."""
        return sum(n for (_, t), n in self.rows.items() if t == table)

    def by_agent(self) -> dict[str, dict[str, int]]:
        """agent -> table -> rows, every table listed (0 when none), agents sorted."""
        agents = sorted({agent for agent, _ in self.rows})
        return {a: {t: self.rows.get((a, t), 0) for t in TABLES} for a in agents}

    def to_json(self) -> dict[str, Any]:
        """What ``agentq maintenance prune --json`` prints."""
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "agents": self.by_agent(),
            "total": {t: self.total(t) for t in TABLES},
            "transactions": self.transactions,
            "seconds": round(self.seconds, 3),
        }
