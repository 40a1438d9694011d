"""What `agentq bench chaos` stands on: the PostgreSQL cluster it crashes keeps its data through
the crash, and the bench names its agent and ledger as its tool module does. The bench itself
is not a CI test (issue 23): `agentq bench chaos --quick` runs it; tests/e2e/test_redis_loss.py
and tests/e2e/test_chaos.py cover recovery and worker kills in CI."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import create_engine, text

from app.config import REPO_ROOT
from app.local.postgres import PostgresCluster

sys.path.insert(0, str(REPO_ROOT))
from bench.chaos import AGENT, LEDGER_ENV
from tests.fixtures.declarations import declarations_restored

pytestmark = pytest.mark.integration


def test_a_postgres_cluster_of_its_own_keeps_committed_data_through_a_crash() -> None:
    with PostgresCluster() as cluster:
        engine = create_engine(cluster.url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE kept (n int)"))
            conn.execute(text("INSERT INTO kept VALUES (42)"))
        engine.dispose()
        cluster.restart("immediate")  # no shutdown checkpoint: recovery replays the WAL
        with engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM kept")).scalar_one() == 42
        engine.dispose()


def test_the_bench_names_its_agent_and_ledger_as_its_tool_module_does() -> None:
    with declarations_restored():
        import bench.chaos_tools as tools

        assert (tools.AGENT, tools.LEDGER_ENV) == (AGENT, LEDGER_ENV)
