"""``--tenant`` and ``agentq tenant`` on real Redis and SQLite: a command acts for one tenant
(the default one without the flag) and refuses another tenant's run or session with exit 2;
``agentq tenant export`` writes the tenant's lines, ``delete`` removes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import yaml

from app.config import Settings
from app.memory.history import claim_session
from app.memory.migrate import migrate
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from tests.fixtures.cli import agentq, one_line

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump({"agents": [{"name": "chat", "backend": "echo"}]}))
    url = f"sqlite:///{tmp_path / 'agentq.sqlite3'}"
    migrate(url)
    store = SessionStore.from_url(url, migrate=False)
    for tenant in ("acme", "globex"):
        run = NewRun(f"{tenant}-run", "chat", "hi", f"{tenant}-chat", tenant=tenant)
        assert claim_session(store, run).held_by(run.id)
        final = StepRecord(0, StepKind.FINAL, f"secret of {tenant}")
        assert store.commit_step(run.id, final, final_answer=final.model_output,
                                 session_id=run.session_id)  # fmt: skip
    store.close()
    return Settings(_env_file=None, redis_url=redis_url, database_url=url, agents_file=agents)


def test_reads_act_for_one_tenant_and_refuse_anothers(cli_settings: Settings) -> None:
    mine = agentq(cli_settings, "runs", "show", "acme-run", "--tenant", "acme", "--json")
    assert mine.returncode == 0 and json.loads(mine.stdout)["answer"] == "secret of acme"
    for args in (
        ("runs", "show", "acme-run"),
        ("session", "show", "acme-chat"),
        ("session", "export", "acme-chat"),
        ("session", "delete", "acme-chat"),
    ):
        theirs = agentq(cli_settings, *args, "--tenant", "globex")
        assert theirs.returncode == 2, args
        assert "not tenant 'globex'" in one_line(theirs) and "secret" not in theirs.stdout
    default = agentq(cli_settings, "session", "show", "acme-chat")  # the default tenant
    assert default.returncode == 2
    listed = agentq(cli_settings, "runs", "list", "--tenant", "globex", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["items"]] == ["globex-run"]
    bad = agentq(cli_settings, "runs", "list", "--tenant", "no spaces")
    assert bad.returncode == 2


def test_a_tenant_is_exported_then_deleted(cli_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "acme.jsonl"
    exported = agentq(cli_settings, "tenant", "export", "acme", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [next(iter(line)) for line in lines] == ["session", "run"]
    assert lines[1]["run"]["answer"] == "secret of acme"
    deleted = agentq(cli_settings, "tenant", "delete", "acme", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["runs"] == 1
    gone = agentq(cli_settings, "runs", "show", "acme-run", "--tenant", "acme")
    assert gone.returncode != 0
    kept = agentq(cli_settings, "runs", "show", "globex-run", "--tenant", "globex")
    assert kept.returncode == 0
