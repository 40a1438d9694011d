"""Apply the session store's Alembic migrations from code (no alembic.ini needed), and check
at start, without importing Alembic, that the schema is current."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, func, inspect, select
from sqlalchemy.exc import DBAPIError

from app.errors import StoreError
from app.memory.sessions import make_engine, store_error

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The newest migration's revision id (tests/unit/memory/test_schema_revision.py holds it to
# Alembic's head). Ids are zero-padded numbers, so a later revision's id sorts after.
HEAD_REVISION: Final = "0012"

_VERSIONS = Table("alembic_version", MetaData(), Column("version_num", String))

# Key of the PostgreSQL advisory lock that serializes upgrades (any constant of our own).
ADVISORY_LOCK_KEY = 0x61676E7471  # "agntq"


def schema_revision(engine: Engine) -> str | None:
    """The revision the schema is at (Alembic's ``alembic_version``); None: no schema yet."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(_VERSIONS.name):
                return None
            return conn.execute(select(_VERSIONS.c.version_num)).scalar_one_or_none()
    except DBAPIError as exc:
        raise store_error(exc, engine) from exc


def ensure_schema(engine: Engine, *, upgrade: bool) -> None:
    """Make sure the schema is at :data:`HEAD_REVISION` or later, for a process starting on it.

    One read when it is (Alembic is not imported). A schema behind is upgraded when
    ``upgrade`` (:func:`migrate`), else :class:`StoreError` says to run ``agentq db upgrade``.
    A later revision (a newer release migrated first, as in a rolling upgrade) is left alone.
    """
    revision = schema_revision(engine)
    if revision is not None and revision >= HEAD_REVISION:
        return
    if upgrade:
        migrate(engine)
        return
    where = engine.url.render_as_string(hide_password=True)
    raise StoreError(
        f"the session store at {where} is at schema revision {revision or 'none'}, this agentq "
        f"needs {HEAD_REVISION}: run `agentq db upgrade` (the migrate job) or start with "
        "AGENTQ_AUTO_MIGRATE=true"
    )


def alembic_config() -> Config:
    """An Alembic config whose scripts are the package's ``migrations`` folder."""
    from alembic.config import Config  # only to migrate: a worker on a current schema skips it

    config = Config()
    # '%' would start configparser interpolation.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    return config


def migrate(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``; concurrent callers (threads, processes) are safe.

    The whole upgrade runs in one transaction that first takes a lock: an advisory lock on
    PostgreSQL, the database write lock (BEGIN IMMEDIATE) on SQLite. A second caller waits,
    then finds the schema current and does nothing.
    """
    from alembic import command

    def upgrade(config: Config, revision: str) -> None:
        command.upgrade(config, revision)
        connection = config.attributes["connection"]
        if connection.dialect.name == "postgresql":
            from app.memory.vector_pg import enable_pgvector

            enable_pgvector(connection)  # pgvector installed since migration 0010 ran

    _alembic(engine_or_url, upgrade, revision)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Take the schema back to ``revision`` (a rollback of a release), under the same lock."""
    from alembic import command

    _alembic(engine_or_url, command.downgrade, revision)


def _alembic(
    engine_or_url: Engine | str, action: Callable[[Config, str], None], revision: str
) -> None:
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        with (
            engine.connect() as conn,
            _sqlite_foreign_keys_off(conn),
            conn.execution_options(sqlite_begin="IMMEDIATE").begin(),
        ):
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
            config = alembic_config()
            config.attributes["connection"] = conn
            action(config, revision)
    except DBAPIError as exc:
        raise store_error(exc, engine) from exc
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()


@contextmanager
def _sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    """On SQLite, foreign keys off for the block (set outside a transaction, where SQLite
    reads it): batch mode replaces a table by a copy, and dropping the old ``runs`` would
    otherwise delete every step through ON DELETE CASCADE."""
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        driver.execute("PRAGMA foreign_keys=ON")
