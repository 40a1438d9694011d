"""A first agent in five minutes: `agentq new agent` in an empty folder, then the test it wrote
passes as a user runs it (pytest in that folder, a real worker, Redis and Triton started and
stopped by app.testing.local_stack)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.new import scaffold
from app.config import child_env
from app.testing import local_stack
from tests.fixtures.declarations import UserCode, declarations_restored

pytestmark = pytest.mark.e2e

AGENTQ = Path(sys.executable).with_name("agentq")  # the console script of this environment


def test_a_fresh_scaffold_passes_its_own_test(tmp_path: Path) -> None:
    made = subprocess.run(
        [str(AGENTQ), "new", "agent", "shop"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=child_env({}),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.py", "test_shop.py"]
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env=child_env({}),
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout  # the scripted model, then the real one (llm extra)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The scaffold's module in the current directory, forgotten after the test."""
    code = UserCode(tmp_path)
    code.module("shop", scaffold("shop")["shop.py"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with declarations_restored():
        yield
    code.forget()


def test_the_local_stack_runs_the_agent_and_stops_every_process_it_started(shop) -> None:
    with local_stack(include=["shop"]) as stack:
        result = stack.submit("shop", 'Twice. [tool:shop_tool {"text": "hi", "times": 2}]')
        answer = result.get(timeout=60)
        pids = [stack.redis.pid, stack.triton.pid, *stack.triton.stub_pids, stack.worker.pid]
        run = stack.store.load_run(result.id)
    assert "hi hi" in answer
    assert run is not None and run.status == "succeeded"
    [call] = run.steps[0].tool_calls
    assert (call.name, call.result) == ("shop_tool", {"text": "hi hi", "words": 2})
    assert len(pids) >= 4 and all(isinstance(p, int) for p in pids)
    assert [p for p in pids if p is not None and _alive(p)] == []
