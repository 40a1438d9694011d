"""``agentq demo --model local``: the demo's stack on the real local model (llm extra)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from app.config import child_env

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.e2e


def test_the_local_demo_shows_the_models_calls_their_results_and_answers(tmp_path):
    env = {k: v for k, v in child_env({"COLUMNS": "200"}).items() if not k.startswith("AGENTQ_")}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--model", "local"],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SmolLM2-135M-Instruct on llama.cpp" in out.stdout
    assert "6 of 6 runs succeeded" in out.stdout
    # Every run's first reply is a schema-valid call the worker made: the transcript shows the
    # model's arguments and the tool's result for each agent's tool.
    assert re.search(r'arithmetic\(a=[-0-9.]+, op="[-+*/]", b=[-0-9.]+\)', out.stdout)
    assert re.search(r'count_words\(text="[^"]+', out.stdout)
    assert "they make up the run's answer: yes" in out.stdout
    assert "everything stopped" in out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing left in the working folder
