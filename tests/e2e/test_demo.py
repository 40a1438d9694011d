"""The README's demo command: embedded Redis, real Triton, real workers, every run answered."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import child_env

pytestmark = pytest.mark.e2e


def test_demo_runs_agents_end_to_end_and_stops_everything(tmp_path):
    env = {k: v for k, v in child_env({"COLUMNS": "160"}).items() if not k.startswith("AGENTQ_")}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--runs", "12"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 of 12 runs succeeded" in out.stdout
    assert "embedded Redis" in out.stdout
    assert "Answer: 391" in out.stdout  # 17 * 23 through the calculator tool
    # One run streamed live: its tokens, then the check that they make up its answer.
    assert "Answer: TOKENS TRAVEL FROM TRITON THROUGH A REDIS STREAM" in out.stdout
    assert "they make up the run's answer: yes" in out.stdout
    assert "everything stopped" in out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing left in the working folder


def test_demo_uses_the_redis_named_by_agentq_redis_url(tmp_path, redis_client, redis_url):
    env = {k: v for k, v in child_env({}).items() if not k.startswith("AGENTQ_")}
    env["AGENTQ_REDIS_URL"] = redis_url
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--runs", "4", "--model-latency-ms", "0"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Redis from AGENTQ_REDIS_URL: {redis_url}" in out.stdout
    assert "embedded Redis" not in out.stdout
    assert "4 of 4 runs succeeded" in out.stdout


def test_demo_with_an_unknown_agent_fails_in_one_line_and_stops_what_it_started(tmp_path):
    env = {k: v for k, v in child_env({}).items() if not k.startswith("AGENTQ_")}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--agents", "nope"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "demo failed: unknown agent 'nope'" in out.stdout
    assert "everything stopped" in out.stdout
    assert list(tmp_path.iterdir()) == []
