"""The code stays lint-clean, formatted and type-checked (STYLE.md habit 9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "app", "tests", "models", "bench"],
        ["ruff", "format", "--check", "app", "tests", "models", "bench"],
        ["mypy", "app", "bench"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(command):
    args = [str(BIN / command[0]), *command[1:]]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
