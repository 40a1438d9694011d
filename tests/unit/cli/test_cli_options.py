"""`agentq --version`, `agentq triton serve --help` and Celery's -Q on `agentq worker`."""

from __future__ import annotations

from importlib.metadata import version

import celery
from click.testing import CliRunner

from app.cli import main


def test_version_names_agentq_and_celery() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"agentq {version('agentq')} (celery {celery.__version__})\n"


def test_triton_serve_is_a_documented_command() -> None:
    result = CliRunner().invoke(main, ["triton", "serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--model [scripted|local]" in result.output
    assert "SIGTERM" in result.output
    assert "serve" in CliRunner().invoke(main, ["triton", "--help"]).output


def test_worker_q_takes_agent_types_and_queue_names_as_agents_does() -> None:
    # Refused before any connection: only the name that is neither is named.
    result = CliRunner().invoke(main, ["worker", "-Q", "research,agent.coder,translator"])
    assert result.exit_code == 2
    assert result.output.startswith("agentq: no agent type 'translator' to serve (known: ")
