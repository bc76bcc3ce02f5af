"""Taking a backup and restoring one: the transactions around the archive format.

A backup reads in one snapshot transaction, so it is consistent while the dispatcher
and workers go on: SQLite in WAL mode gives a deferred ``BEGIN`` a snapshot and never
makes a writer wait for a reader; PostgreSQL gets ``REPEATABLE READ READ ONLY``. Reads
go in keyset chunks (``archive.READ_CHUNK`` rows), so no table is ever held in memory.

A restore writes in one transaction: all rows or none. The file is checked whole
before the database is opened, and its checksum again as the rows go in (an error at
the end rolls everything back).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session

from bridge.settings import redact_text
from bridge.store.archive import TABLES, Header, dump, read_rows
from bridge.store.engine import StoreError, _where, writing
from bridge.store.tables import (
    EDGES,
    EVENTS,
    LEASES,
    LOGS,
    META,
    POOLS,
    RUNS,
    SCHEDULES,
    SLOTS,
    TASKS,
)

WRITE_CHUNK = 1000
"""Rows per bulk insert."""

DISPATCHER_LEASE = "dispatcher"
"""The start of every dispatcher lease's name (``bridge.dispatcher.LEASE_NAME``)."""

NAMED_CONFLICTS = 3
"""Task ids a refused ``--merge`` names."""

NAMED = ("runs", "pools", "schedules")
"""Tables keyed by a name: a ``--merge`` adds the names the live database lacks and keeps
its own rows for the rest (its pool sizes and schedules are the ones in force)."""


class Mode(str, Enum):
    RESTORE = "restore"
    """Into an empty database: the snapshot's identity and next token replace its own."""
    REPLACE = "replace"
    """Every row of the backed-up tables deleted first, in the same transaction."""
    MERGE = "merge"
    """Into a live database: new task ids only; its identity stays, tokens keep ahead."""


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """One read transaction that sees one moment of the database and blocks no writer."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    try:
        with Session(engine) as session:
            yield session
            session.rollback()
    except OperationalError as exc:
        raise StoreError(f"database error: {exc.orig}") from None


def backup(engine: Engine, path: str | Path) -> dict[str, int]:
    """Write a consistent backup of the whole database to ``path``; row counts per table."""
    with snapshot(engine) as session:
        return dump(session, path)


def restore(engine: Engine, path: str | Path, *, mode: Mode) -> dict[str, int]:
    """Load the backup at ``path`` in one transaction; row counts per table written.

    Tasks that were ``queued`` or ``working`` in the snapshot stay so: the dispatcher's
    start-up reconciliation judges them as it judges any task in flight after a crash
    (a job Redis does not have is sent again as a new attempt).
    """
    url = engine.url.render_as_string(hide_password=False)
    target = _where(url)
    try:
        with _driver_quiet(), writing(engine) as session:
            return _load(session.connection(), path, mode=mode, target=target)
    except DBAPIError as exc:  # a constraint, a permission: nothing was written
        message = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"cannot restore into {target}: {redact_text(message, url)}") from None


@contextmanager
def _driver_quiet() -> Iterator[None]:
    """psycopg logs a warning of its own when a failed bulk insert ends its pipeline; the
    error this module raises already says what failed, in one line."""
    driver_log = logging.getLogger("psycopg")
    level = driver_log.level
    driver_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        driver_log.setLevel(level)


def _load(conn: Connection, path: str | Path, *, mode: Mode, target: str) -> dict[str, int]:
    if mode is not Mode.MERGE:
        _refuse_running_dispatcher(conn, target)
    if mode is Mode.RESTORE:
        _require_empty(conn, target)
    elif mode is Mode.REPLACE:
        for table in (EVENTS, LOGS, EDGES, TASKS, SLOTS, RUNS, POOLS, SCHEDULES):
            conn.execute(delete(table))
    written = dict.fromkeys(TABLES, 0)
    meta: dict[str, str] = {}
    batch: list[dict[str, Any]] = []
    batch_table: str | None = None

    def flush() -> None:
        if batch and batch_table is not None:
            rows = batch
            if batch_table == "tasks" and mode is Mode.MERGE:
                _refuse_existing(conn, [row["id"] for row in batch], target)
            elif batch_table in NAMED and mode is Mode.MERGE:
                rows = _new_names(conn, TABLES[batch_table], batch)
            if rows:
                conn.execute(insert(TABLES[batch_table]), rows)
            written[batch_table] += len(rows)
        batch.clear()

    for item in read_rows(path):
        if isinstance(item, Header):
            continue
        name, row = item
        if name == "bridge_meta":
            meta[str(row["key"])] = str(row["value"])
            continue
        if mode is Mode.MERGE:
            if name == "worker_slots":
                continue  # the live database's slots belong to its dispatcher
            if name in ("task_events", "task_logs"):
                row = {k: v for k, v in row.items() if k != "id"}  # its own ids go on
        if name != batch_table or len(batch) >= WRITE_CHUNK:
            flush()
            batch_table = name
        batch.append(row)
    flush()
    written["bridge_meta"] = _apply_meta(conn, meta, mode)
    if conn.dialect.name == "postgresql" and mode is not Mode.MERGE:
        # Explicit ids do not move a serial column's sequence: move it past them.
        for serial in ("task_events", "task_logs"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{serial}', 'id'),"
                    f" COALESCE((SELECT MAX(id) FROM {serial}), 0) + 1, false)"
                )
            )
    return written


def _require_empty(conn: Connection, target: str) -> None:
    tasks = int(conn.execute(select(func.count()).select_from(TASKS)).scalar_one())
    events = conn.execute(select(EVENTS.c.id).limit(1)).first()
    if tasks or events is not None:
        raise StoreError(
            f"database {target} is not empty ({tasks} task(s)):"
            " use --replace --yes to replace its contents, or --merge to add to them"
        )


def _refuse_running_dispatcher(conn: Connection, target: str) -> None:
    """A restore swaps the database's identity and tasks: a dispatcher running on it would
    go on with the old namespace in memory. Its lease (not yet expired) says it runs."""
    holder = conn.execute(
        select(LEASES.c.holder)
        .where(LEASES.c.name.startswith(DISPATCHER_LEASE, autoescape=True))
        .where(LEASES.c.expires_at > time.time())
    ).scalar()
    if holder is not None:
        raise StoreError(
            f"dispatcher {holder} is running on database {target}: stop it before restoring"
        )


def _refuse_existing(conn: Connection, ids: list[str], target: str) -> None:
    found = sorted(row[0] for row in conn.execute(select(TASKS.c.id).where(TASKS.c.id.in_(ids))))
    if found:
        named = ", ".join(repr(i) for i in found[:NAMED_CONFLICTS])
        more = len(found) - NAMED_CONFLICTS
        raise StoreError(
            f"cannot merge into {target}: task id(s) already there: {named}"
            + (f" and {more} more" if more > 0 else "")
            + "; nothing was merged"
        )


def _new_names(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = [row["name"] for row in rows]
    there = {r[0] for r in conn.execute(select(table.c.name).where(table.c.name.in_(names)))}
    return [row for row in rows if row["name"] not in there]


def _apply_meta(conn: Connection, meta: dict[str, str], mode: Mode) -> int:
    """Restore and replace take the snapshot's facts (identity, next token) as they are;
    merge keeps the live identity and only moves the next token up to the larger one."""
    if mode is Mode.MERGE:
        if "next_token" not in meta:
            return 0
        live = conn.execute(
            select(META.c.value).where(META.c.key == "next_token")
        ).scalar_one_or_none()
        try:
            wanted = max(int(meta["next_token"]), int(live or 1))
        except ValueError:
            raise StoreError(
                f"backup has a next_token that is not a number: {meta['next_token']!r}"
            ) from None
        if str(wanted) == live:
            return 0
        conn.execute(delete(META).where(META.c.key == "next_token"))
        conn.execute(insert(META).values(key="next_token", value=str(wanted)))
        return 1
    if meta:
        conn.execute(delete(META).where(META.c.key.in_(list(meta))))
        conn.execute(insert(META), [{"key": k, "value": v} for k, v in sorted(meta.items())])
    return len(meta)
