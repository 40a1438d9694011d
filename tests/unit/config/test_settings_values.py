"""Settings read from the environment as a user writes them (set but empty included)."""

from __future__ import annotations

from app.config import Settings


def test_an_empty_agents_file_or_include_variable_means_none(monkeypatch) -> None:
    monkeypatch.setenv("AGENTQ_AGENTS_FILE", "")
    monkeypatch.setenv("AGENTQ_INCLUDE", "")
    settings = Settings(_env_file=None)
    assert (settings.agents_file, settings.include) == (None, [])
    monkeypatch.setenv("AGENTQ_AGENTS_FILE", "agents.yaml")
    assert str(Settings(_env_file=None).agents_file) == "agents.yaml"
