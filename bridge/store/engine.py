"""Opening the database and the transactions every store function runs in."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import Session, create_engine

from bridge.defaults import BUSY_TIMEOUT_MS
from bridge.errors import BridgeError
from bridge.store.schema import ensure_schema


class StoreError(BridgeError):
    """A database problem the user can act on; the CLI prints it as one line."""


class TaskStateError(StoreError):
    """The task exists but its state does not allow the request."""


def now() -> str:
    return stamp(datetime.now(timezone.utc))


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def open_engine(url: str) -> Engine:
    """One engine per process, schema created on first use.

    SQLite gets WAL (readers never block the dispatcher), a busy timeout, foreign
    keys, and ``BEGIN IMMEDIATE`` for writes so two writers queue on the lock
    instead of failing when one upgrades a read transaction.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {url!r}") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_path(parsed.database)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # missing driver, bad options
            raise StoreError(f"cannot use database {url!r}: {exc}") from None
    try:
        ensure_schema(engine)
    except OperationalError as exc:
        raise StoreError(f"cannot open database {_where(url)}: {exc.orig}") from None
    return engine


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return repr(parsed.database or ":memory:")
    return repr(parsed.render_as_string(hide_password=True))


def _check_sqlite_path(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        folder = os.path.dirname(os.path.abspath(database))
    except OSError as exc:  # the working directory itself is gone
        raise StoreError(f"cannot open database {database!r}: {exc.strerror}") from None
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise StoreError(f"cannot open database {database!r}: {folder!r} is not a directory")
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open database {database!r}: directory {folder!r} does not exist")
    if os.path.exists(database):
        if not os.access(database, os.R_OK | os.W_OK):
            raise StoreError(
                f"cannot open database {database!r}: file is not readable and writable"
            )
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot create database {database!r}: directory {folder!r} is not writable"
        )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("bridge_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A write transaction: committed on success, rolled back (file untouched) on error."""
    try:
        with Session(engine.execution_options(bridge_write=True)) as session:
            with session.begin():
                yield session
    except OperationalError as exc:
        raise StoreError(f"database error: {exc.orig}") from None


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    try:
        with Session(engine) as session:
            yield session
    except OperationalError as exc:
        raise StoreError(f"database error: {exc.orig}") from None
