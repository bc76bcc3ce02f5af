"""STAND-IN archive writer for the ``prune`` branch: NOT the backup format.

The real ``bridge/store/archive.py`` (the versioned backup format of ``bridge db
backup``) is built on another branch and replaces this file at merge. This stand-in
has exactly its ``dump`` signature and promises (fsynced, atomic, ``StoreError`` on
any OS error with no partial file left) so that ``bridge db prune --archive`` can be
built and tested: a gzip file of JSON lines, one header line, then one line per row.
"""

import gzip
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session

from bridge.store.engine import StoreError
from bridge.store.tables import EDGES, EVENTS, TASKS, _chunks

STAND_IN_FORMAT = "bridge-archive-stand-in"


def dump(
    session: Session, path: str | Path, *, task_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Write a backup of the whole database (task_ids None) or of just these tasks (their
    tasks rows, the edges between them, their events) to path, fsynced, atomically
    (temp file in the same folder + rename); returns row counts per table. Raises
    StoreError on any OS error, leaving no partial file."""
    target = Path(path)
    conn = session.connection()
    counts = {"tasks": 0, "task_edges": 0, "task_events": 0}
    temp: str | None = None
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        with os.fdopen(handle, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb") as out:
                out.write(_line({"format": STAND_IN_FORMAT, "version": 0}))
                for table, rows in _rows(conn, task_ids):
                    for row in rows:
                        out.write(_line({"table": table, "row": dict(row._mapping)}))
                        counts[table] += 1
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target)
        temp = None
        folder = os.open(target.parent or ".", os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        raise StoreError(f"cannot write archive {str(target)!r}: {exc.strerror or exc}") from None
    finally:
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass
    return counts


def _rows(conn, task_ids: Sequence[str] | None):
    if task_ids is None:
        yield "tasks", conn.execute(select(TASKS).order_by(TASKS.c.seq))
        yield "task_edges", conn.execute(select(EDGES))
        yield "task_events", conn.execute(select(EVENTS).order_by(EVENTS.c.id))
        return
    wanted = set(task_ids)
    for ids in _chunks(list(task_ids)):
        yield "tasks", conn.execute(select(TASKS).where(TASKS.c.id.in_(ids)))
    for ids in _chunks(list(task_ids)):
        rows = conn.execute(select(EDGES).where(EDGES.c.task_id.in_(ids)))
        yield "task_edges", (r for r in rows if r.depends_on in wanted)
    for ids in _chunks(list(task_ids)):
        yield "task_events", conn.execute(select(EVENTS).where(EVENTS.c.task_id.in_(ids)))


def _line(data: dict) -> bytes:
    return (json.dumps(data, ensure_ascii=False, default=str) + "\n").encode("utf-8")
