"""`agentq queues` and `agentq purge` on real Redis: messages submitted, taken by a consumer as a
worker takes them (one running, one held for its countdown), dead-lettered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from app.celery_ext.app import create_celery
from app.cli import main
from app.config import Settings, settings_env
from app.constants import TASK_RUN_AGENT
from app.memory.migrate import migrate
from app.producer.submit import submit
from app.tasks import dead_letters as dlq
from tests.fixtures.cli import agentq

pytestmark = pytest.mark.integration

RESEARCH, CODER = "agent.research", "agent.coder"


@pytest.fixture
def cli_settings(redis_client, redis_url: str, sqlite_url: str) -> Settings:
    """Settings on the test Redis and a fresh SQLite file (no model server: nothing runs)."""
    return Settings(_env_file=None, redis_url=redis_url, database_url=sqlite_url)


@pytest.fixture
def celery(cli_settings: Settings) -> Iterator:
    app = create_celery(cli_settings)
    yield app
    app.close()


def invoke(settings: Settings, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=settings_env(settings), input=input)


@pytest.fixture
def busy(celery, redis_client) -> Iterator[None]:
    """research: a retry held for its countdown, a step running, one run waiting, a dead letter;
    coder: one message from a producer that does not stamp its time. Taken messages stay
    unacknowledged while the consumer's connection is open (closed, it puts them back)."""

    def take() -> None:  # the oldest, as a worker takes it
        assert channel.basic_get(RESEARCH, no_ack=False) is not None

    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        celery.send_task(
            TASK_RUN_AGENT, kwargs={"agent": "research"}, queue=RESEARCH, countdown=600
        )
        take()
        for text in ("one", "two"):
            submit("research", text, celery=celery)
        take()
        celery.send_task(TASK_RUN_AGENT, kwargs={"agent": "coder"}, queue=CODER)
        letter = dlq.DeadLetter(
            run_id="run-1", agent="research", step=0, kind=dlq.DeadLetterKind.POISON,
            reason="ValueError: no", retries=0, kwargs={}, task_id="run-1", failed_at=time.time(),
        )  # fmt: skip
        dlq.push(redis_client, letter)
        yield


def test_queues_json_counts_ready_unacked_in_flight_delayed_and_dead_letters(
    cli_settings, busy
) -> None:
    result = invoke(cli_settings, "queues", "--json")
    assert result.exit_code == 0, result.output
    stats = {s["agent"]: s for s in json.loads(result.stdout)}
    research, coder = stats["research"], stats["coder"]
    assert {k: v for k, v in research.items() if k != "oldest_waiting_s"} == {
        "agent": "research",
        "queue": RESEARCH,
        "ready": 1,
        "unacked": 2,
        "in_flight": 1,
        "delayed": 1,
        "dead_letters": 1,
    }
    assert research["oldest_waiting_s"] >= 0
    assert coder["ready"] == 1 and coder["unacked"] == 0 and coder["dead_letters"] == 0
    assert coder["oldest_waiting_s"] is None  # not stamped by agentq: unknown


def test_queues_on_empty_queues_and_the_q_option(cli_settings) -> None:
    result = invoke(cli_settings, "queues", "-Q", "agent.coder", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "agent": "coder",
            "queue": CODER,
            "ready": 0,
            "unacked": 0,
            "in_flight": 0,
            "delayed": 0,
            "oldest_waiting_s": None,
            "dead_letters": 0,
        }
    ]
    refused = invoke(cli_settings, "queues", "-Q", "research,nobody")
    assert refused.exit_code == 2
    assert refused.output.startswith("agentq: no agent type or queue 'nobody' (agent types: ")


def test_the_queues_table_fits_80_columns_with_names_whole(cli_settings, busy) -> None:
    out = agentq(cli_settings, "queues", env={"COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    row = next(line for line in lines if " research " in line)
    assert RESEARCH in row and " s " in row  # the oldest's age, in seconds
    assert "unknown" in next(line for line in lines if " coder " in line)


def test_purge_asks_first_and_deletes_nothing_on_no(cli_settings, busy, redis_client) -> None:
    before = {k: redis_client.type(k) for k in redis_client.scan_iter()}
    result = invoke(cli_settings, "purge", input="n\n")
    assert result.exit_code == 1  # aborted
    assert "Delete 2 waiting message(s)?" in result.output
    assert f"{RESEARCH}: 1 (and 2 taken by workers, kept)" in result.output
    assert f"{CODER}: 1 (and 0 taken by workers, kept)" in result.output
    assert {k: redis_client.type(k) for k in redis_client.scan_iter()} == before
    assert redis_client.llen(RESEARCH) == redis_client.llen(CODER) == 1


def _listed_research_runs(settings: Settings) -> list[str]:
    items = json.loads(invoke(settings, "runs", "list", "--json").stdout)["items"]
    return [run["id"] for run in items if run["agent"] == "research"]


def test_purge_on_yes_deletes_ready_messages_only(cli_settings, busy, redis_client) -> None:
    kept = set(redis_client.keys()) - {RESEARCH.encode(), CODER.encode()}
    migrate(cli_settings.database_url)  # `agentq runs list` reads the store too
    submitted = _listed_research_runs(cli_settings)  # both runs, the taken one and the waiting
    result = invoke(cli_settings, "purge", "-Q", "research", input="y\n")
    assert result.exit_code == 0, result.output
    assert f"purged 1 message(s) from {RESEARCH}" in result.output
    assert redis_client.llen(RESEARCH) == 0 and redis_client.llen(CODER) == 1  # -Q: research only
    assert kept <= set(redis_client.keys())  # unacked, dead letters, results: untouched
    after = json.loads(invoke(cli_settings, "queues", "-Q", "research", "--json").stdout)[0]
    assert (after["ready"], after["unacked"], after["dead_letters"]) == (0, 2, 1)
    # the purged run is no longer listed as queued; the one a worker took still is
    assert len(submitted) == 2 and _listed_research_runs(cli_settings) == submitted[1:]


def test_purge_force_does_not_ask(cli_settings, busy, redis_client) -> None:
    result = invoke(cli_settings, "purge", "-f")
    assert result.exit_code == 0, result.output
    assert "Delete" not in result.output
    assert redis_client.llen(RESEARCH) == redis_client.llen(CODER) == 0
    again = invoke(cli_settings, "purge", "-Q", "agent.research")  # nothing left: no question
    assert again.exit_code == 0 and again.output == f"no messages waiting in {RESEARCH}\n"
