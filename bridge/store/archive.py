"""The backup format: writing a snapshot of the database, and reading one back safely.

A backup (and a prune archive) is one gzip file of JSON Lines, UTF-8:

1. a header::

       {"format": "bridge-backup", "version": 1, "schema": "<revision>",
        "created_at": "2026-11-27T21:58:19+00:00", "partial": false,
        "counts": {"tasks": 2000, "task_edges": 1999, ...}}

   ``schema`` is the Alembic revision of the database it came from (its
   ``alembic_version`` row), or ``"unversioned"`` for a database without one;
   ``partial`` is true for an archive of some tasks only (``bridge db prune --archive``);
2. one line per row, tables in the order ``tasks``, ``task_edges``, ``task_events``,
   ``task_logs``, ``worker_slots``, ``runs``, ``pools``, ``schedules``, ``bridge_meta``,
   each sorted by its primary key (a file from before runs existed simply has none of
   the later four)::

       {"table": "tasks", "row": {"id": "a", "description": "...", ...}}

   Values are exactly as stored (text stays text: ``payload`` and ``output`` are the
   stored JSON text, times the stored UTC strings); a missing value is ``null``;
3. a trailer: ``{"end": true, "sha256": "<hex>"}``, the SHA-256 of every byte of the
   lines before it (newlines included), so a truncated or altered file is refused.

``bridge_meta`` travels with the rows: it holds the database's identity (its Redis
namespace) and its next fencing token, so a restored or moved database keeps both.
``leases`` is never written: a lease belongs to a process running against the old
database, not to the data. ``alembic_version`` is not written either: the target
database has its own schema, the rows are inserted by column name.

A reader refuses a file whose ``version`` is newer than ``VERSION``; a later version of
the format will add fields rather than change them, and must bump ``VERSION`` if an
older reader could misread it.
"""

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table, func, inspect, select, text, tuple_
from sqlalchemy.engine import Connection
from sqlmodel import Session

from bridge.store.engine import StoreError
from bridge.store.tables import (
    EDGES,
    EVENTS,
    LOGS,
    META,
    POOLS,
    RUNS,
    SCHEDULES,
    SLOTS,
    TASKS,
    _chunks,
)

FORMAT = "bridge-backup"
VERSION = 1
"""The newest format version this bridge writes and reads."""

TABLES: dict[str, Table] = {
    "tasks": TASKS,
    "task_edges": EDGES,
    "task_events": EVENTS,
    "task_logs": LOGS,
    "worker_slots": SLOTS,
    "runs": RUNS,
    "pools": POOLS,
    "schedules": SCHEDULES,
    "bridge_meta": META,
}
"""The tables a backup holds, in the order they are written and restored (parents first)."""

READ_CHUNK = 2000
"""Rows per read: a backup never holds a whole table in memory."""

COMPRESS_LEVEL = 6
"""gzip's usual trade-off; level 9 takes about twice as long for a few percent."""


# ------------------------------------------------------------------------------ writing


def schema_revision(conn: Connection) -> str:
    """The database's Alembic revision, or ``"unversioned"`` when it has none."""
    if not inspect(conn).has_table("alembic_version"):
        return "unversioned"
    revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(revision) if revision else "unversioned"


def dump(
    session: Session, path: str | Path, *, task_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Write a backup of the whole database (task_ids None) or of just these tasks (their
    tasks rows, the edges between them, their events) to path, fsynced, atomically
    (temp file in the same folder + rename); returns row counts per table. Raises
    StoreError on any OS error, leaving no partial file.

    Everything is read through ``session``, in its one transaction: the caller decides
    the isolation (``snapshot`` for a backup; a prune's own write transaction for an
    archive). A partial dump also carries ``bridge_meta`` (the next fencing token, which
    ``restore --merge`` keeps ahead of) and the tasks' logs, but no ``worker_slots``,
    runs, pools or schedules (a prune leaves those in the database).
    """
    conn = session.connection()
    ids = None if task_ids is None else sorted(set(task_ids))
    counts = _counts(conn, ids)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "schema": schema_revision(conn),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "partial": ids is not None,
        "counts": counts,
    }
    target = Path(path)
    shown = f"{'archive' if ids is not None else 'backup'} {path}"
    if target.is_dir():
        raise StoreError(f"cannot write {shown}: it is a directory")
    folder = target.absolute().parent
    try:
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".partial")
    except OSError as exc:
        raise StoreError(f"cannot write {shown}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as raw:
            with gzip.GzipFile(
                filename="", fileobj=raw, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0
            ) as compressed:
                lines = _LineWriter(compressed)
                lines.write(header)
                written = dict.fromkeys(TABLES, 0)
                for name, row in _rows(conn, ids):
                    lines.write({"table": name, "row": row})
                    written[name] += 1
                lines.flush()
                compressed.write(_encode({"end": True, "sha256": lines.digest.hexdigest()}))
            raw.flush()
            os.fsync(raw.fileno())
        if written != counts:  # the caller's session was not one transaction
            raise StoreError(f"cannot write {shown}: the database changed while read")
        os.replace(temp, target)
        _fsync_folder(folder)
    except OSError as exc:
        _remove(temp)
        raise StoreError(f"cannot write {shown}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(temp)
        raise
    return counts


class _LineWriter:
    """Writes JSON lines, hashing exactly the bytes written; lines go out in batches
    (one small compressor call per line would cost more than the encoding)."""

    BATCH = 1000

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.pending: list[bytes] = []

    def write(self, item: dict[str, Any]) -> None:
        self.pending.append(_encode(item))
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        data = b"".join(self.pending)
        self.pending.clear()
        self.digest.update(data)
        self.out.write(data)


def _encode(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _counts(conn: Connection, ids: list[str] | None) -> dict[str, int]:
    if ids is None:
        return {
            name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in TABLES.items()
        }
    wanted = set(ids)
    counts = dict.fromkeys(TABLES, 0)
    for chunk in _chunks(ids):
        counts["tasks"] += int(
            conn.execute(
                select(func.count()).select_from(TASKS).where(TASKS.c.id.in_(chunk))
            ).scalar_one()
        )
        counts["task_events"] += int(
            conn.execute(
                select(func.count()).select_from(EVENTS).where(EVENTS.c.task_id.in_(chunk))
            ).scalar_one()
        )
        counts["task_logs"] += int(
            conn.execute(
                select(func.count()).select_from(LOGS).where(LOGS.c.task_id.in_(chunk))
            ).scalar_one()
        )
        counts["task_edges"] += sum(
            1
            for (depends_on,) in conn.execute(
                select(EDGES.c.depends_on).where(EDGES.c.task_id.in_(chunk))
            )
            if depends_on in wanted
        )
    counts["bridge_meta"] = int(conn.execute(select(func.count()).select_from(META)).scalar_one())
    return counts


def _rows(conn: Connection, ids: list[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every row to write, table by table, each table in primary-key order."""
    if ids is None:
        for name, table in TABLES.items():
            for row in _keyset(conn, table):
                yield name, row
        return
    wanted = set(ids)
    for chunk in _chunks(ids):
        for row in conn.execute(select(TASKS).where(TASKS.c.id.in_(chunk)).order_by(TASKS.c.id)):
            yield "tasks", dict(row._mapping)
    for chunk in _chunks(ids):
        query = select(EDGES).where(EDGES.c.task_id.in_(chunk))
        for row in conn.execute(query.order_by(EDGES.c.task_id, EDGES.c.depends_on)):
            if row.depends_on in wanted:
                yield "task_edges", dict(row._mapping)
    for chunk in _chunks(ids):
        query = select(EVENTS).where(EVENTS.c.task_id.in_(chunk)).order_by(EVENTS.c.id)
        for row in conn.execute(query):
            yield "task_events", dict(row._mapping)
    for chunk in _chunks(ids):
        query = select(LOGS).where(LOGS.c.task_id.in_(chunk)).order_by(LOGS.c.id)
        for row in conn.execute(query):
            yield "task_logs", dict(row._mapping)
    for row in _keyset(conn, META):
        yield "bridge_meta", row


def _keyset(conn: Connection, table: Table) -> Iterator[dict[str, Any]]:
    """A table in primary-key order, ``READ_CHUNK`` rows per query (keyset pagination)."""
    key = list(table.primary_key.columns)
    last: tuple[Any, ...] | None = None
    while True:
        query = select(table).order_by(*key).limit(READ_CHUNK)
        if last is not None:
            if len(key) == 1:
                query = query.where(key[0] > last[0])
            else:
                query = query.where(tuple_(*key) > tuple_(*last))
        result = conn.execute(query)
        names = list(result.keys())
        rows = [dict(zip(names, row, strict=True)) for row in result]
        yield from rows
        if len(rows) < READ_CHUNK:
            return
        last = tuple(rows[-1][c.name] for c in key)


# ------------------------------------------------------------------------------ reading


@dataclass
class Header:
    """What a backup says about itself, once the whole file has been checked."""

    schema: str
    created_at: str
    partial: bool
    counts: dict[str, int] = field(default_factory=dict)


def read_header(path: str | Path) -> Header:
    """Check the whole file (format, version, every line, counts, checksum) without
    touching any database; its header, or StoreError naming what is wrong."""
    header: Header | None = None
    seen = dict.fromkeys(TABLES, 0)
    for item in read_rows(path):
        if isinstance(item, Header):
            header = item
        else:
            seen[item[0]] += 1
    assert header is not None  # read_rows yields it first or raises
    for name, count in seen.items():
        if header.counts.get(name, 0) != count:
            raise StoreError(
                f"backup {path} is damaged: its header counts"
                f" {header.counts.get(name, 0)} {name} row(s), the file holds {count}"
            )
    return header


def read_rows(path: str | Path) -> Iterator[Header | tuple[str, dict[str, Any]]]:
    """The header, then every ``(table, row)``, streamed; the checksum is checked when
    the trailer is reached, so a consumer must read to the end before trusting (a restore
    does: it writes in one transaction that this error rolls back)."""
    shown = str(path)
    if not os.path.exists(path):
        raise StoreError(f"no backup file at {shown}")
    if os.path.isdir(path):
        raise StoreError(f"cannot read backup {shown}: it is a directory")
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as compressed:
            first = compressed.readline()
            header = _parse_header(first, shown)
            digest.update(first)
            yield header
            columns = {name: {c.name for c in table.columns} for name, table in TABLES.items()}
            ended = False
            for number, line in enumerate(compressed, start=2):
                if ended:
                    raise StoreError(f"backup {shown} is damaged: lines after its end line")
                item = _parse_line(line, shown, number)
                if item.get("end") is True:
                    if item.get("sha256") != digest.hexdigest():
                        raise StoreError(
                            f"backup {shown} is damaged: checksum mismatch (altered or corrupt)"
                        )
                    ended = True
                    continue
                digest.update(line)
                name, row = item.get("table"), item.get("row")
                if name not in columns or not isinstance(row, dict):
                    raise StoreError(
                        f"backup {shown} is damaged: line {number} is not a row of a known table"
                    )
                unknown = set(row) - columns[name]
                if unknown:
                    raise StoreError(
                        f"backup {shown} has column {sorted(unknown)[0]!r} in table {name},"
                        f" which this bridge does not know (schema {header.schema})"
                    )
                yield name, row
            if not ended:
                raise StoreError(f"backup {shown} is truncated: it has no end line")
    except (EOFError, zlib.error) as exc:
        raise StoreError(f"backup {shown} is truncated or corrupt: {exc}") from None
    except gzip.BadGzipFile:
        raise StoreError(f"{shown} is not a bridge backup (not a gzip file)") from None
    except OSError as exc:
        raise StoreError(f"cannot read backup {shown}: {exc.strerror or exc}") from None


def _parse_header(line: bytes, shown: str) -> Header:
    try:
        item = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        item = None
    if not isinstance(item, dict) or item.get("format") != FORMAT:
        raise StoreError(f"{shown} is not a bridge backup (no bridge-backup header)")
    version = item.get("version")
    if not isinstance(version, int):
        raise StoreError(f"backup {shown} is damaged: its header has no format version")
    if version > VERSION:
        raise StoreError(
            f"backup {shown} was written by a newer bridge (format version {version};"
            f" this bridge reads up to {VERSION})"
        )
    counts = item.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
        raise StoreError(f"backup {shown} is damaged: its header has no row counts")
    return Header(
        schema=str(item.get("schema", "unversioned")),
        created_at=str(item.get("created_at", "?")),
        partial=bool(item.get("partial", False)),
        counts=counts,
    )


def _parse_line(line: bytes, shown: str, number: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        raise StoreError(f"backup {shown} is damaged: line {number} is not a JSON object")
    return item
