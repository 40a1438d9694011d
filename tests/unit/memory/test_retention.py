"""Retention policies: an agent type's own knobs over the settings', validated where they are
declared; the report a pass prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.agents.loader import load_registry
from app.agents.registry import Agent, AgentSpec
from app.config import AgentRetention, RetentionSettings, Settings
from app.errors import ConfigurationError
from app.memory.retention import TABLES, Policy, PruneReport, policies

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_an_agent_types_own_fields_win_and_unset_ones_fall_back_to_the_settings() -> None:
    settings = RetentionSettings(max_age_days=30, max_runs=None, session_idle_days=90)
    own = AgentRetention(max_runs=100)
    assert Policy.of(settings, own) == Policy(30, 100, 90)
    assert Policy.of(settings) == Policy(30, None, 90)
    found = policies(settings, {"coder": AgentRetention(max_age_days=7)}, ["research", "coder"])
    assert list(found) == ["coder", "research"]
    assert found["coder"].runs_before(NOW) == NOW - timedelta(days=7)
    assert found["research"].sessions_before(NOW) == NOW - timedelta(days=90)


@pytest.mark.parametrize(
    "retention",
    [{"max_age_days": 0}, {"max_runs": -1}, {"session_idle_days": -2.5}, {"keep": "forever"}],
)
def test_an_agent_types_retention_takes_only_positive_known_knobs(retention: dict) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        Agent("bad-retention", retention=retention)


def test_the_settings_refuse_limits_that_are_not_positive(monkeypatch) -> None:
    monkeypatch.setenv("AGENTQ_RETENTION__MAX_AGE_DAYS", "7.5")
    monkeypatch.setenv("AGENTQ_RETENTION__MAX_RUNS", "1000")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.retention.max_age_days, settings.retention.max_runs) == (7.5, 1000)
    monkeypatch.setenv("AGENTQ_RETENTION__BATCH", "0")
    with pytest.raises(ValueError, match="batch"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_an_agents_file_declares_retention(tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "agents:\n  - name: research\n    retention: {max_age_days: 7, max_runs: 500}\n"
        "  - name: coder\n"
    )
    registry = load_registry(Settings(_env_file=None, agents_file=agents))  # type: ignore[call-arg]
    assert registry.get("research").retention == AgentRetention(max_age_days=7, max_runs=500)
    assert registry.get("coder").retention == AgentRetention()
    assert AgentSpec(name="x").retention == AgentRetention()


def test_the_report_lists_every_table_per_agent_type_and_the_totals() -> None:
    report = PruneReport(now=NOW, dry_run=True)
    report.add("research", {"runs": 2, "steps": 5, "sessions": 0})
    report.add("research", {"runs": 1})
    report.add("coder", {"sessions": 1})
    data = report.to_json()
    assert data["agents"] == {
        "coder": dict.fromkeys(TABLES, 0) | {"sessions": 1},
        "research": dict.fromkeys(TABLES, 0) | {"runs": 3, "steps": 5},
    }
    assert data["total"]["runs"] == 3 and data["total"]["sessions"] == 1
    assert data["dry_run"] is True and data["now"] == NOW.isoformat()
