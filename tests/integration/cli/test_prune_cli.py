"""``agentq maintenance prune`` on a real store and Redis: its JSON and table, a dry run, the
counts it leaves for the exporter, and the loop the compose service runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from app.cli import main
from app.config import Settings, child_env
from app.constants import history_keys
from app.local.processes import stop_process, wait_until
from app.memory.records import RunStatus
from app.memory.sessions import SessionStore
from app.ops.exporter import Exporter
from app.ops.pruned import read_counts
from tests.fixtures.retention import NOW, STEPS_PER_RUN, Rows

pytestmark = pytest.mark.integration

AGENTS = """\
agents:
  - name: research
    retention: {max_age_days: 5}
  - name: coder
"""


@pytest.fixture
def env(
    sql_store: SessionStore,
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The prune command's settings: the test's store and Redis, an agents file whose
    research agent keeps its runs 5 days, and the settings' 30 days for the others."""
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    variables = {
        "AGENTQ_DATABASE_URL": sql_store.engine.url.render_as_string(hide_password=False),
        "AGENTQ_REDIS_URL": redis_url,
        "AGENTQ_AGENTS_FILE": str(agents),
        "AGENTQ_RETENTION__MAX_AGE_DAYS": "30",
        "AGENTQ_RETENTION__BATCH": "2",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@pytest.fixture
def rows(sql_store: SessionStore) -> Rows:
    made = Rows(sql_store)
    made.run("research-3", 3)
    made.run("research-7", 7, draft=True)
    made.run("research-8", 8, status=RunStatus.FAILED)
    made.run("coder-7", 7, agent="coder")
    made.run("coder-40", 40, agent="coder")
    made.run("coder-running", 400, agent="coder", status=RunStatus.RUNNING)
    return made


def prune(*args: str) -> dict:
    result = CliRunner().invoke(main, ["maintenance", "prune", "--now", NOW.isoformat(), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else {"text": result.output}


def test_prune_prints_json_per_agent_type_and_table_and_counts_for_the_exporter(
    env: dict[str, str], rows: Rows, redis_client: redis.Redis
) -> None:
    report = prune("--json")
    assert rows.run_ids() == {"research-3", "coder-7", "coder-running"}
    assert report["dry_run"] is False and report["now"] == NOW.isoformat()
    assert report["agents"]["research"] == {
        "runs": 2,
        "steps": 2 * STEPS_PER_RUN,
        "step_drafts": 1,
        "tool_results": 1,
        "accepted_runs": 2,
        "sessions": 0,
    }
    assert report["agents"]["coder"]["runs"] == 1
    assert report["total"]["runs"] == 3
    assert report["transactions"] >= 4  # batch 2: each agent type's phases, research's twice

    counts, last = read_counts(redis_client)
    assert counts[("research", "runs")] == 2 and counts[("coder", "steps")] == STEPS_PER_RUN
    assert last is not None
    # Each pass adds to the counts: a counter that only grows.
    rows.run("coder-50", 50, agent="coder")
    prune("--json")
    assert read_counts(redis_client)[0][("coder", "runs")] == 2

    settings = Settings(_env_file=None, redis_url=env["AGENTQ_REDIS_URL"])  # type: ignore[call-arg]
    exporter = Exporter(settings).start(port=0)
    try:
        scrape = httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10).text
    finally:
        exporter.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }
    pruned = "agentq_pruned_rows_total"
    assert samples[(pruned, (("agent", "coder"), ("table", "runs")))] == 2
    assert samples[(pruned, (("agent", "research"), ("table", "step_drafts")))] == 1
    last_pass = samples[("agentq_prune_last_pass_timestamp_seconds", ())]
    assert last_pass == read_counts(redis_client)[1] and last_pass >= last


def test_a_dry_run_deletes_nothing_and_records_nothing(
    env: dict[str, str], rows: Rows, redis_client: redis.Redis
) -> None:
    before = rows.run_ids()
    report = prune("--json", "--dry-run")
    assert report["dry_run"] is True and report["total"]["runs"] == 3
    assert rows.run_ids() == before
    assert read_counts(redis_client) == ({}, None)
    text = prune("--dry-run")["text"]
    assert "rows would go" in text and "dry run: nothing deleted" in text
    assert rows.run_ids() == before


def test_the_table_lists_each_agent_type_and_the_total(env: dict[str, str], rows: Rows) -> None:
    text = prune()["text"]
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    # columns: runs steps step_drafts tool_results accepted_runs sessions
    assert lines["research"] == ["2", str(2 * STEPS_PER_RUN), "1", "1", "2", "0"]
    assert lines["coder"][0] == "1" and lines["total"][0] == "3"
    assert "nothing to prune" in prune()["text"]


def test_now_is_for_one_pass_and_every_takes_seconds(env: dict[str, str]) -> None:
    runner = CliRunner()
    both = runner.invoke(main, ["maintenance", "prune", "--now", NOW.isoformat(), "--every"])
    assert both.exit_code == 2 and "--every" in both.output
    bad = runner.invoke(main, ["maintenance", "prune", "--every", "0"])
    assert bad.exit_code == 2 and "more than 0" in bad.output
    bad_now = runner.invoke(main, ["maintenance", "prune", "--now", "yesterday"])
    assert bad_now.exit_code == 2 and "ISO-8601" in bad_now.output


def test_the_loop_prunes_every_interval_until_sigterm(
    env: dict[str, str], rows: Rows, redis_client: redis.Redis, tmp_path: Path
) -> None:
    alive = tmp_path / "alive"
    out = (tmp_path / "prune.out").open("wb")
    command = [sys.executable, "-m", "app.cli", "maintenance", "prune", "--json"]
    # --every alone (last, as in docker-compose.yml): AGENTQ_RETENTION__INTERVAL_S.
    proc = subprocess.Popen(
        [*command, "--alive-file", str(alive), "--every"],
        env=child_env({**env, "AGENTQ_RETENTION__INTERVAL_S": "0.2"}),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        # The process's own clock (later than NOW): coder-40 is past 30 days whatever it says.
        assert wait_until(lambda: "coder-40" not in rows.run_ids(), 60, proc)
        assert wait_until(alive.exists, 30, proc)
        passes = (tmp_path / "prune.out").read_text().count('"dry_run": false')
        assert wait_until(
            lambda: (tmp_path / "prune.out").read_text().count('"dry_run": false') > passes,
            30,
            proc,
        )
    finally:
        code = stop_process(proc, sig=signal.SIGTERM)
        out.close()
    output = (tmp_path / "prune.out").read_text()
    assert code == 0, output
    first = json.loads(output.splitlines()[0])
    assert first["total"]["runs"] >= 1  # one JSON line per pass
    assert "coder-running" in rows.run_ids()


def test_a_removed_sessions_cached_history_goes_with_it(
    env: dict[str, str], rows: Rows, redis_client: redis.Redis
) -> None:
    idle = rows.session("idle")
    rows.run("idle-run", 200, session=idle)
    kept = rows.session("kept")
    rows.run("kept-run", 1, session=kept)
    for session in (idle, kept):
        for key in history_keys(session):
            redis_client.set(key, "cached")
    report = prune("--json")
    assert report["total"]["sessions"] == 1 and rows.session_ids() == {kept}
    assert [redis_client.exists(k) for k in history_keys(idle)] == [0, 0]
    assert [redis_client.exists(k) for k in history_keys(kept)] == [1, 1]
