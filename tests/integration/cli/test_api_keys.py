"""`agentq api key new|list|revoke` on a real SQLite session store: a key is printed once,
alone on stdout, listed without its secret, and refused once revoked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli import main
from app.cli.exits import ExitCode
from app.memory.api_keys import ApiKeyStore

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    monkeypatch.setenv("AGENTQ_DATABASE_URL", url)
    return url


def agentq(*args: str) -> Result:
    return CliRunner().invoke(main, ["api", "key", *args])


def verify(database_url: str, key: str) -> str | None:
    store = ApiKeyStore.from_url(database_url, migrate=False, cache_s=0)
    try:
        found = store.verify(key)
    finally:
        store.close()
    return found.id if found else None


def test_new_prints_the_key_once_and_list_shows_it_without_its_secret(database_url: str) -> None:
    made = agentq("new", "--scopes", "read,submit", "--tenant", "acme", "--name", "ci")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert "cannot be shown again" in made.stderr
    key_id = verify(database_url, key)
    assert key_id is not None and key.startswith(f"aq_{key_id}_")

    listed = agentq("list", "--json")
    assert listed.exit_code == 0, listed.output
    [shown] = json.loads(listed.stdout)
    assert shown["id"] == key_id
    assert (shown["name"], shown["scopes"], shown["tenant"]) == ("ci", ["submit", "read"], "acme")
    assert shown["created_at"] and shown["revoked_at"] is None
    assert key.removeprefix(f"aq_{key_id}_") not in listed.stdout
    table = agentq("list")
    assert table.exit_code == 0 and key_id in table.stdout and "submit,read" in table.stdout


def test_revoke_makes_the_key_refused(database_url: str) -> None:
    key = agentq("new", "--scopes", "operate").stdout.strip()
    key_id = verify(database_url, key)
    assert key_id is not None
    revoked = agentq("revoke", key_id)
    assert revoked.exit_code == 0, revoked.output
    assert f"API key {key_id} revoked at" in revoked.stdout
    assert verify(database_url, key) is None
    [shown] = json.loads(agentq("list", "--json").stdout)
    assert shown["revoked_at"] is not None


def test_an_unknown_scope_is_refused_with_exit_2(database_url: str) -> None:
    refused = agentq("new", "--scopes", "read,admin")
    assert refused.exit_code == ExitCode.REFUSED == 2
    assert "unknown scope(s) admin" in refused.output
    assert json.loads(agentq("list", "--json").stdout) == []


def test_a_tenant_that_is_no_tenant_id_is_refused_with_exit_2(database_url: str) -> None:
    refused = agentq("new", "--scopes", "read", "--tenant", "no spaces")
    assert refused.exit_code == ExitCode.REFUSED == 2
    assert "'tenant' must be 1-64 letters" in refused.output
    assert json.loads(agentq("list", "--json").stdout) == []


def test_revoking_an_unknown_key_says_so(database_url: str) -> None:
    result = agentq("revoke", "nobody")
    assert result.exit_code == 1
    assert "no API key 'nobody'" in result.output
