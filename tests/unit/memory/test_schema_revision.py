"""The start-up schema check: HEAD_REVISION is Alembic's head, a current schema is one read, a
schema behind is upgraded or refused in one line, a newer one is left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from app.errors import StoreError
from app.memory.migrate import (
    HEAD_REVISION,
    alembic_config,
    ensure_schema,
    migrate,
    schema_revision,
)
from app.memory.sessions import make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'agentq.sqlite3'}")
    yield engine
    engine.dispose()


def test_head_revision_is_alembics_head_and_ids_sort_in_order() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == [HEAD_REVISION], "set HEAD_REVISION to the newest migration"
    for script in scripts.walk_revisions():
        # ensure_schema compares ids as text: a later migration's id must sort after.
        assert len(script.revision) == len(HEAD_REVISION) and script.revision.isdigit()
        if isinstance(script.down_revision, str):  # one parent: the chain has no merges
            assert script.revision > script.down_revision


def test_a_current_schema_passes(engine: Engine) -> None:
    migrate(engine)
    assert schema_revision(engine) == HEAD_REVISION
    ensure_schema(engine, upgrade=False)


def test_a_schema_behind_is_refused_in_one_line_naming_the_upgrade(engine: Engine) -> None:
    migrate(engine, "0006")
    with pytest.raises(StoreError) as refused:
        ensure_schema(engine, upgrade=False)
    message = str(refused.value)
    assert "\n" not in message
    assert f"revision 0006, this agentq needs {HEAD_REVISION}" in message
    assert "agentq db upgrade" in message


def test_no_schema_is_refused_without_upgrade(engine: Engine) -> None:
    assert schema_revision(engine) is None
    with pytest.raises(StoreError, match="revision none"):
        ensure_schema(engine, upgrade=False)


def test_a_schema_behind_is_upgraded_with_upgrade(engine: Engine) -> None:
    migrate(engine, "0006")
    ensure_schema(engine, upgrade=True)
    assert schema_revision(engine) == HEAD_REVISION
    ensure_schema(engine, upgrade=True)  # current: nothing to do


def test_a_newer_releases_schema_is_left_alone(engine: Engine) -> None:
    # A rolling upgrade: the new release's migration ran, this worker is still the old one.
    migrate(engine)
    newer = str(int(HEAD_REVISION) + 1).zfill(len(HEAD_REVISION))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    ensure_schema(engine, upgrade=False)
    ensure_schema(engine, upgrade=True)
    assert schema_revision(engine) == newer
