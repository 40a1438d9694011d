"""`--json` on the read commands: JSON alone on stdout, every field the table shows and more."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from app.cli import main
from app.config import Settings, settings_env
from app.memory.sessions import SessionStore
from app.tasks import dead_letters as dlq
from tests.fixtures.cli import agentq

pytestmark = pytest.mark.integration

RUN_ID = "0b8f3c2e-1d7a-4f1e-9b0c-2a6d4e8f1c3b"


@pytest.fixture
def cli_settings(redis_client, redis_url: str, sqlite_url: str) -> Settings:
    """Settings on the test Redis and a fresh SQLite file (no model server: nothing runs)."""
    return Settings(_env_file=None, redis_url=redis_url, database_url=sqlite_url)


def stdout_json(settings: Settings, *args: str) -> object:
    result = CliRunner().invoke(main, [*args, "--json"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def letter(redis_client) -> dlq.DeadLetter:
    letter = dlq.DeadLetter(
        run_id=RUN_ID, agent="research", step=2, kind=dlq.DeadLetterKind.RETRIES_EXHAUSTED,
        reason="still failing after 3 retries: InferenceUnavailableError: down", retries=3,
        kwargs={"agent": "research", "input": "hi", "run_id": RUN_ID, "step": 2},
        task_id=f"{RUN_ID}:2", failed_at=time.time(), traceback="Traceback ...",
    )  # fmt: skip
    dlq.push(redis_client, letter)
    return letter


def test_status_json_lists_each_run_whole(cli_settings) -> None:
    store = SessionStore.from_url(cli_settings.database_url, migrate=True)
    store.start_run(RUN_ID, "research", {"question": "why"}, "session-1")
    store.close()
    [run] = stdout_json(cli_settings, "status")
    assert (run["id"], run["agent"], run["status"], run["next_step"]) == (
        RUN_ID,
        "research",
        "running",
        0,
    )
    assert run["input"] == {"question": "why"} and run["session_id"] == "session-1"
    assert run["created_at"] and run["answer"] is None


def test_status_table_keeps_run_ids_whole_at_80_columns(cli_settings) -> None:
    store = SessionStore.from_url(cli_settings.database_url, migrate=True)
    store.start_run(RUN_ID, "research", "a question " * 30)
    store.close()
    out = agentq(cli_settings, "status", env={"COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    assert RUN_ID in out.stdout and max(map(len, out.stdout.splitlines())) <= 80


def test_dlq_list_json_is_the_table_and_show_json_is_the_whole_letter(cli_settings, letter):
    [listed] = stdout_json(cli_settings, "dlq", "list")
    assert listed == {
        "run_id": RUN_ID,
        "agent": "research",
        "step": 2,
        "kind": "retries_exhausted",
        "reason": letter.reason,
        "retries": 3,
        "task_id": f"{RUN_ID}:2",
        "failed_at": letter.failed_at,
        "raw_length": None,
        "queue": None,
        "worker": None,
    }
    shown = stdout_json(cli_settings, "dlq", "show", RUN_ID)
    assert shown["kwargs"] == letter.kwargs and shown["traceback"] == "Traceback ..."
    assert shown["raw"] is None and shown["reason"] == letter.reason


def test_dlq_list_table_keeps_run_ids_whole_at_80_columns(cli_settings, letter) -> None:
    out = agentq(cli_settings, "dlq", "list", env={"COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    assert RUN_ID in out.stdout
