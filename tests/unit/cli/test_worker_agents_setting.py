"""`agentq worker` takes its agent types from AGENTQ_WORKER__AGENTS (the images' entrypoint)."""

from __future__ import annotations

from click.testing import CliRunner

from app.cli import main
from app.config import Settings


def test_the_setting_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("AGENTQ_WORKER__AGENTS", "research")
    assert Settings().worker.agents == "research"


def test_worker_consumes_the_types_the_environment_names() -> None:
    # An unknown type is refused before any connection is made, naming the types it was given.
    result = CliRunner().invoke(main, ["worker"], env={"AGENTQ_WORKER__AGENTS": "translator"})
    assert result.exit_code == 2
    assert result.output == (
        "agentq: no agent type 'translator' to serve (known: research, coder); declare it in "
        "AGENTQ_AGENTS_FILE or in a module given to --include\n"
    )


def test_the_agents_flag_wins_over_the_environment() -> None:
    result = CliRunner().invoke(
        main, ["worker", "--agents", "summarizer"], env={"AGENTQ_WORKER__AGENTS": "translator"}
    )
    assert result.exit_code == 2
    assert "'summarizer'" in result.output and "translator" not in result.output
