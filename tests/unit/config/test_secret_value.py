"""Secrets named by a declaration (an agent's MCP credentials): a variable, or the file named
by the variable plus ``_FILE``."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import secret_value
from app.errors import ConfigurationError


def test_secrets_come_from_a_variable_or_the_file_it_names(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGENTQ_TEST_SECRET", raising=False)
    monkeypatch.delenv("AGENTQ_TEST_SECRET_FILE", raising=False)
    with pytest.raises(
        ConfigurationError, match="set AGENTQ_TEST_SECRET or AGENTQ_TEST_SECRET_FILE"
    ):
        secret_value("AGENTQ_TEST_SECRET")
    (tmp_path / "s").write_text("from-file\n")
    monkeypatch.setenv("AGENTQ_TEST_SECRET_FILE", str(tmp_path / "s"))
    assert secret_value("AGENTQ_TEST_SECRET") == "from-file"
    monkeypatch.setenv("AGENTQ_TEST_SECRET", "from-env")
    assert secret_value("AGENTQ_TEST_SECRET") == "from-env"
