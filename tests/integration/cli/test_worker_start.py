"""What `agentq worker` does before it consumes: it imports only what its agents and settings
use, and refuses, in one line, a session store whose schema is behind when it may not
migrate it, and a Redis that may evict its queues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.exits import ExitCode
from app.config import child_env
from app.local.redis import RedisServer
from app.memory.migrate import migrate

pytestmark = pytest.mark.integration

# The worker serves `trivial` only: the registry's Triton agent is another worker's.
AGENTS = """agents:
  - name: trivial
    backend: echo
    max_steps: 2
  - name: holding
    max_steps: 2
"""

# Neither an echo agent nor SQLite needs any of these: the Triton client, OpenTelemetry
# (tracing off), Alembic (the schema is current), Flower, the CLI's tables, the deploy
# generator, the bench, MCP, the HTTP API and its client, chat templates, tokenizers,
# PostgreSQL's dialect, Celery's own command line.
HEAVY = (
    "tritonclient",
    "grpc",
    "numpy",
    "opentelemetry",
    "alembic",
    "flower",
    "rich",
    "app.deploy",
    "bench",
    "mcp",
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
    "jinja2",
    "tokenizers",
    "sqlalchemy.dialects.postgresql",
    "celery.bin",
    "prompt_toolkit",
    "app.api",
)

# Runs the worker command up to the point where Celery's worker would start consuming (the
# worker is built, not started), then prints the modules loaded. The baseline is what
# `import redis` loads alone: redis-py imports OpenTelemetry's metrics SDK when installed.
PROBE = """
import json, sys
import app.celery_ext.worker as worker_module
from app.cli import main

def stop_here(worker):
    print(json.dumps(sorted(sys.modules)))
    return 0, None

worker_module.run_worker = stop_here
main(["worker", "--agents", "trivial", "-n", "probe@localhost"])
"""
BASELINE = "import json, sys, redis; print(json.dumps(sorted(sys.modules)))"


def _env(tmp_path: Path, redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    (tmp_path / "agents.yaml").write_text(AGENTS)
    env = child_env(
        {
            "AGENTQ_REDIS_URL": redis_url,
            "AGENTQ_BROKER_URL": redis_url,
            "AGENTQ_RESULT_BACKEND": redis_url,
            "AGENTQ_AGENTS_FILE": str(tmp_path / "agents.yaml"),
            "AGENTQ_DATABASE_URL": database_url,
            "AGENTQ_HEALTH__PORT": "0",
            **extra,
        }
    )
    for name in ("AGENTQ_INCLUDE", "AGENTQ_TRACING__EXPORTER", "AGENTQ_OPENAI__REPLICAS"):
        env.pop(name, None)
    return env


def _modules(code: str, env: dict[str, str], cwd: Path) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_an_echo_worker_on_sqlite_imports_none_of_the_heavy_modules(
    tmp_path: Path, redis_url: str
) -> None:
    database_url = f"sqlite:///{tmp_path / 'agentq.sqlite3'}"
    migrate(database_url)
    env = _env(tmp_path, redis_url, database_url)
    loaded = _modules(PROBE, env, tmp_path)
    assert "celery.apps.worker" in loaded  # the probe got as far as the built worker
    forced = _modules(BASELINE, env, tmp_path)
    own = loaded - forced
    heavy = sorted(m for m in own if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == []


def test_a_schema_behind_stops_a_worker_that_may_not_migrate_in_one_line(
    tmp_path: Path, redis_url: str
) -> None:
    database_url = f"sqlite:///{tmp_path / 'agentq.sqlite3'}"
    migrate(database_url, "0006")
    env = _env(tmp_path, redis_url, database_url, AGENTQ_AUTO_MIGRATE="false")
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--agents", "trivial"],
        env=env, cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == ExitCode.STORE_UNAVAILABLE
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentq: the session store at sqlite:///")
    assert "is at schema revision 0006" in lines[0] and "`agentq db upgrade`" in lines[0]


def test_a_redis_that_may_evict_stops_the_worker_in_one_line_and_noeviction_starts_it(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'agentq.sqlite3'}"
    migrate(database_url)
    with RedisServer(options=["--maxmemory-policy", "allkeys-lru"]) as server:
        env = _env(tmp_path, server.url, database_url)
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "worker", "--agents", "trivial"],
            env=env, cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert out.returncode == ExitCode.ERROR  # bad settings, as a wrong password
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith(
            f"agentq: Redis at {server.url} (broker, state, results) has maxmemory-policy "
            "allkeys-lru: under memory pressure it would evict queued steps, leases and markers"
        )
        assert "`CONFIG SET maxmemory-policy noeviction`" in lines[0]

        server.client().config_set("maxmemory-policy", "noeviction")
        out = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "celery.apps.worker" in out.stdout  # past every start-up check: the worker is built
        # No AOF, no save rule: a warning in the worker's log, in Celery's format.
        warning = next(line for line in out.stderr.splitlines() if "keeps no data" in line)
        assert "WARNING/MainProcess] Redis at " in warning and "set appendonly yes" in warning
