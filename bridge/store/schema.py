"""Making the schema and the database's own facts (identity, fencing tokens).

Until versioned migrations arrive, an older database is brought up to date here,
in place and without loss: each step is idempotent and runs under the write lock.
"""

import uuid

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel

from bridge.models import Meta

META = Meta.__table__

_ADDED_COLUMNS = {
    "tasks": {"queue": "TEXT NOT NULL DEFAULT 'bridge'"},
    "leases": {"acquired_at": "REAL"},
}
"""Columns added since 0.1.0, with their DDL for ``ALTER TABLE ... ADD COLUMN``."""


def schema_complete(conn: Connection) -> bool:
    """Whether every table, added column and identity row exists (a cheap read)."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    if not set(SQLModel.metadata.tables) <= tables:
        return False
    for table, columns in _ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        if not set(columns) <= present:
            return False
    keys = {row[0] for row in conn.execute(text("SELECT key FROM bridge_meta"))}
    return {"identity", "next_token"} <= keys


def ensure_schema(engine: Engine) -> None:
    """Create or complete the schema, once, under the write lock.

    Several first commands racing on a fresh file all succeed: the first takes the
    write lock (``BEGIN IMMEDIATE`` on SQLite) and creates everything; the others wait
    for it and then find nothing to do.
    """
    with engine.connect() as conn:
        if schema_complete(conn):
            return
    with engine.execution_options(bridge_write=True).begin() as conn:
        SQLModel.metadata.create_all(conn)
        inspector = inspect(conn)
        for table, columns in _ADDED_COLUMNS.items():
            present = {c["name"] for c in inspector.get_columns(table)}
            for name, ddl in columns.items():
                if name not in present:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))
        keys = {row[0] for row in conn.execute(text("SELECT key FROM bridge_meta"))}
        if "identity" not in keys:
            conn.execute(META.insert().values(key="identity", value=uuid.uuid4().hex))
        if "next_token" not in keys:
            conn.execute(META.insert().values(key="next_token", value="1"))


def namespace(*, session: Session) -> str:
    """The database's Redis namespace: the first 12 hex digits of its identity."""
    value = (
        session.connection()
        .execute(text("SELECT value FROM bridge_meta WHERE key = 'identity'"))
        .scalar()
    )
    if value is None:
        raise RuntimeError("database has no identity: ensure_schema was not run")
    return str(value)[:12]


def take_tokens(*, session: Session, count: int) -> int:
    """Reserve ``count`` fencing tokens in the caller's write transaction; returns the first.

    Tokens only grow, over the database's whole life: ``clean`` and re-added ids never
    bring one back, so a report from before can never match a later attempt.
    """
    conn = session.connection()
    first = int(
        conn.execute(text("SELECT value FROM bridge_meta WHERE key = 'next_token'")).scalar_one()
    )
    conn.execute(
        text("UPDATE bridge_meta SET value = :next WHERE key = 'next_token'"),
        {"next": str(first + count)},
    )
    return first
