"""The Lua scripts and the envelope schema ship in the wheel as package data, where
app.ops.redis_scripts and app.celery_ext.intake read them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import app
from tests.fixtures.services import service_missing

pytestmark = pytest.mark.integration

ROOT = Path(app.__file__).parent.parent


def _build_wheel(out: Path) -> Path:
    """The project's wheel, built as a release is (uv, else pip with hatchling installed)."""
    uv = shutil.which("uv")
    if uv is not None:
        command = [uv, "build", "--wheel", "--out-dir", str(out), str(ROOT)]
    else:
        pytest.importorskip("hatchling", reason="neither uv nor hatchling to build the wheel")
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        command += ["-w", str(out), str(ROOT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        service_missing(f"the wheel could not be built: {done.stderr.strip()[-500:]}")
    (wheel,) = out.glob("agentq-*.whl")
    return wheel


def test_every_lua_script_and_schema_is_in_the_wheel(tmp_path: Path) -> None:
    data = [*(ROOT / "app").rglob("*.lua"), *(ROOT / "app").rglob("*.schema.json")]
    scripts = sorted(p.relative_to(ROOT).as_posix() for p in data)
    assert {"app/celery_ext/lua/take.lua", "app/tasks/lua/release_lease.lua"} <= set(scripts)
    assert "app/celery_ext/envelope.schema.json" in scripts
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        shipped = set(wheel.namelist())
        assert [s for s in scripts if s not in shipped] == []
        for script in scripts:  # byte for byte what the checkout holds
            assert wheel.read(script) == (ROOT / script).read_bytes()
