"""Apply the session store's Alembic migrations from code (no alembic.ini needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError

from app.memory.sessions import make_engine, store_error

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Key of the PostgreSQL advisory lock that serializes upgrades (any constant of our own).
ADVISORY_LOCK_KEY = 0x61676E7471  # "agntq"


def alembic_config() -> Config:
    """An Alembic config whose scripts are the package's ``migrations`` folder."""
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
    _alembic(engine_or_url, command.upgrade, revision)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Take the schema back to ``revision`` (a rollback of a release), under the same lock."""
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
