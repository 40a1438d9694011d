"""Alembic environment: runs on the connection that :func:`app.memory.migrate.migrate` passes.

For ``alembic revision --autogenerate`` from the command line, ``sqlalchemy.url`` in the
Alembic config names the database instead.
"""

from __future__ import annotations

from alembic import context

from app.memory.schema import metadata
from app.memory.sessions import make_engine


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata)
    # Inside migrate()'s transaction this is a no-op; on its own it opens one.
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
