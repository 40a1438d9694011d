"""`agentq api` hands uvicorn the app factory with the flags over the settings, and without the
api extra says, in one line, what to install."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main

pytest.importorskip("uvicorn")


def served(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    import uvicorn

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))
    result = CliRunner().invoke(main, ["api", *args])
    assert result.exit_code == 0, result.output
    [(positional, options)] = calls
    assert positional == ("app.api.app:app_from_environment",)
    assert options["factory"] is True
    return options


def test_settings_choose_the_address_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_API__HOST", "0.0.0.0")
    monkeypatch.setenv("AGENTQ_API__PORT", "8123")
    monkeypatch.setenv("AGENTQ_API__WORKERS", "3")
    monkeypatch.setenv("AGENTQ_API__SHUTDOWN_TIMEOUT_S", "7")
    options = served(monkeypatch)
    assert (options["host"], options["port"], options["workers"]) == ("0.0.0.0", 8123, 3)
    assert options["timeout_graceful_shutdown"] == 7


def test_flags_win_over_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_API__PORT", "8123")
    options = served(monkeypatch, "--host", "127.0.0.2", "--port", "0", "--workers", "2")
    assert (options["host"], options["port"], options["workers"]) == ("127.0.0.2", 0, 2)


def test_without_the_api_extra_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    result = CliRunner().invoke(main, ["api"])
    assert result.exit_code == 1
    assert "agentq[api]" in result.output and "uvicorn" in result.output
