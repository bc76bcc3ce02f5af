"""Opening the database and the transactions every store function runs in."""

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, OperationalError
from sqlmodel import Session, create_engine

from bridge.defaults import BUSY_TIMEOUT_MS
from bridge.settings import redact_text, redact_url
from bridge.store.errors import StoreError
from bridge.store.errors import TaskStateError as TaskStateError  # callers import it from here
from bridge.store.preflight import connect_read_only, is_file, shown_path, sqlite_state
from bridge.store.schema import ensure_schema, refuse


def now() -> str:
    return stamp(datetime.now(timezone.utc))


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def open_engine(
    url: str,
    *,
    create: bool = True,
    auto_migrate: bool = True,
    migrate: bool = True,
    check_schema: bool = True,
) -> Engine:
    """One engine per process, its schema checked (and created or upgraded) on first use.

    SQLite gets WAL (readers never block the dispatcher), a busy timeout, foreign
    keys, and ``BEGIN IMMEDIATE`` for writes so two writers queue on the lock
    instead of failing when one upgrades a read transaction.

    With ``create=False`` (every command but ``add``, ``run`` and ``dispatch``) a
    database that does not exist is an error instead of a new empty file, and a
    SQLite file this process cannot write (or whose folder it cannot write) is
    opened read-only, so it can still be listed (if it is at this bridge's revision).

    The schema (``bridge.store.schema``): a SQLite file is first looked at read-only,
    before the engine writes its journal mode into it, so that a file bridge must not
    touch (newer bridge, Task Coordinator, older with ``auto_migrate`` off) is refused
    byte-for-byte untouched. Then ``ensure_schema``. With ``migrate=False`` (``bridge
    db upgrade``) an older database is let through as it is, for the caller to upgrade.
    With ``check_schema=False`` (``bridge db adopt``, which converts a Task Coordinator
    file itself and then calls ``bridge.store.migrate.upgrade_in`` in its own
    transaction) the schema is neither looked at nor changed.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreError(
            f"not a database URL: {redact_url(url)} (e.g. sqlite:///file.db)"
        ) from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    read_only = False
    at_head = False
    where = _where(url)
    if is_sqlite:
        database = parsed.database
        read_only = not create and _must_read_only(database)
        if not create:
            _check_exists(database)
        _check_sqlite_path(database, read_only=read_only)
        if check_schema and is_file(database):
            state = sqlite_state(str(database))  # before the engine writes to the file
            if state is not None:
                where = shown_path(str(database))
                refuse(state, where, auto_migrate=(auto_migrate or not migrate) and not read_only)
                at_head = state.kind == "head"
        if read_only:
            engine = _read_only_sqlite(str(database))
        else:
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine, read_only=read_only)
    else:
        parsed = _with_driver(parsed, url)
        try:
            engine = create_engine(parsed)
        except Exception as exc:  # missing driver, bad options
            raise StoreError(
                f"cannot use database {redact_url(url)}: {redact_text(str(exc), url)}"
            ) from None
        _ping_when_idle(engine)
    try:
        if not create and not is_sqlite and not inspect(engine).has_table("tasks"):
            raise StoreError(
                f"no bridge tables in database {redact_url(url)}"
                " (bridge add or bridge run creates them)"
            )
        if check_schema and migrate and not read_only and not at_head:
            ensure_schema(engine, auto_migrate, where=where)
    except OperationalError as exc:
        raise StoreError(
            f"cannot open database {_where(url)}: {redact_text(str(exc.orig), url)}"
        ) from None
    return engine


POSTGRES_EXTRA = (
    "install the postgres extra: pip install 'bridge[postgres]', or '.[postgres]' in a clone"
)
"""What to install for PostgreSQL: psycopg 3, through the package's ``postgres`` extra."""


def _with_driver(parsed: URL, url: str) -> URL:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy alone would pick psycopg2, which
    bridge does not ship); a URL naming its driver (``postgresql+psycopg://``) is kept.

    A missing psycopg is said in one line, with the extra that brings it."""
    if parsed.get_backend_name() != "postgresql":
        return parsed
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_driver_name() == "psycopg":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(
                f"cannot use database {redact_url(url)}: PostgreSQL needs the psycopg 3"
                f" driver ({POSTGRES_EXTRA})"
            ) from None
    return parsed


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return repr(parsed.database or ":memory:")
    return redact_url(url)


def _check_exists(database: str | None) -> None:
    if is_file(database) and not os.path.isfile(str(database)):
        shown = shown_path(str(database))
        raise StoreError(f"no database at {shown} (bridge add or bridge run creates it)")


def _must_read_only(database: str | None) -> bool:
    """Whether an existing SQLite file can only be read here (file or folder not writable)."""
    if not is_file(database):
        return False
    folder = os.path.dirname(os.path.abspath(str(database)))
    return not os.access(str(database), os.W_OK) or not os.access(folder, os.W_OK | os.X_OK)


def _read_only_sqlite(database: str) -> Engine:
    """An engine that can only read (``preflight.read_only_uri``)."""

    def connect() -> sqlite3.Connection:
        return connect_read_only(database)

    return create_engine("sqlite://", creator=connect)


def _check_sqlite_path(database: str | None, *, read_only: bool = False) -> None:
    if not is_file(database):
        return
    database = str(database)
    try:
        folder = os.path.dirname(os.path.abspath(database))
    except OSError as exc:  # the working directory itself is gone
        raise StoreError(f"cannot open database {database!r}: {exc.strerror}") from None
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise StoreError(f"cannot open database {database!r}: {folder!r} is not a directory")
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open database {database!r}: directory {folder!r} does not exist")
    if os.path.exists(database):
        wanted = os.R_OK if read_only else os.R_OK | os.W_OK
        if not os.access(database, wanted):
            raise StoreError(
                f"cannot open database {database!r}: file is not readable"
                + ("" if read_only else " and writable")
            )
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot create database {database!r}: directory {folder!r} is not writable"
        )


PING_AFTER_IDLE = 1.0
"""Seconds a pooled server connection may sit unused before it is tested on checkout."""


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use only if it sat idle (a server restart since).

    ``pool_pre_ping`` would test it before every transaction: one more round trip on
    each of the dispatcher's ticks, several hundred a second when busy. A connection
    used a moment ago is taken as it is; if the server went away within that moment,
    the transaction fails as it would have during the ping, and the dispatcher retries
    on a new connection (SQLAlchemy discards the pool on a disconnect error).
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["bridge_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("bridge_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:  # noqa: BLE001 - any failure: the pool makes a new connection
            alive = False
        if not alive:
            raise DisconnectionError("connection lost while idle")


def _tune_sqlite(engine: Engine, *, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not read_only:  # a journal mode is written to the file
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
    """A write transaction: committed on success, rolled back (file untouched) on error.

    Any driver error becomes a one-line ``StoreError``: not only a lock or a lost
    connection (``OperationalError``) but a value PostgreSQL refuses (``DataError``) or
    a constraint no rule of ours caught, which would otherwise reach the user as a
    traceback."""
    try:
        with Session(engine.execution_options(bridge_write=True)) as session:
            with session.begin():
                yield session
    except DBAPIError as exc:
        raise StoreError(f"database error: {_first_line(exc.orig)}") from None


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    try:
        with Session(engine) as session:
            yield session
    except DBAPIError as exc:
        raise StoreError(f"database error: {_first_line(exc.orig)}") from None


def _first_line(error: BaseException | None) -> str:
    """A driver's message without the SQL and parameters PostgreSQL appends on later lines."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
