"""`agentq bench chaos` at tiny counts: every fault strikes runs under way, every run ends,
none is lost, no step is committed twice; and the PostgreSQL cluster it crashes keeps its
data through the crash."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import create_engine, text

from app.config import REPO_ROOT
from app.local.postgres import PostgresCluster

sys.path.insert(0, str(REPO_ROOT))
from bench.chaos import AGENT, FAULTS, LEDGER_ENV, ChaosPlan, run
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


def test_the_chaos_bench_loses_no_run_through_every_fault(tmp_path, triton_home) -> None:
    plan = ChaosPlan(
        runs=60, workers=2, concurrency=8, settle_s=45, gap_s=0.5, storm_s=3, storm_every_s=1.5
    )
    with declarations_restored():  # the bench's producer imports bench/chaos_tools.py
        doc = run(plan, tmp_path, progress=lambda line: None)
    assert [f["fault"] for f in doc["faults"]] == list(FAULTS)
    assert all(f["unfinished"] > 0 for f in doc["faults"]), doc["faults"]  # each hit runs
    assert doc["all_ended"], doc["statuses"]
    assert doc["runs_lost"] == 0 and doc["runs_succeeded"] == doc["runs_submitted"] >= 60
    assert doc["steps_committed_twice"] == 0 and doc["runs_with_wrong_step_count"] == 0
    # Every tool call ran at least once; a worker killed mid-call may have run it twice.
    assert doc["tool_calls_distinct"] == doc["tool_calls_expected"]
    assert doc["storm_sigkills"] >= 2


def test_the_bench_names_its_agent_and_ledger_as_its_tool_module_does() -> None:
    with declarations_restored():
        import bench.chaos_tools as tools

        assert (tools.AGENT, tools.LEDGER_ENV) == (AGENT, LEDGER_ENV)
