"""Alembic's environment for bridge: run online on the connection bridge hands over,
or offline (``--sql``) for the dialect bridge names.

``bridge.store.migrate`` builds the ``Config`` in code and puts in its ``attributes``:
``connection`` (online: a SQLAlchemy connection, usually already inside the caller's
locked transaction, which Alembic then joins instead of committing itself) or
``dialect_name`` (offline). A developer may also run the ``alembic`` command with
``sqlalchemy.url`` set; then an engine is made from it.
"""

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run_offline() -> None:
    """Write the SQL instead of running it: values inline, one transaction around all."""
    dialect_name = config.attributes.get("dialect_name")
    url = None if dialect_name else config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        dialect_name=dialect_name,
        literal_binds=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
