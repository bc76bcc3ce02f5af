"""Table handles and the small helpers every store module shares."""

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlmodel import Session

from bridge.models import (
    Lease,
    Meta,
    Pool,
    Run,
    Schedule,
    Task,
    TaskEdge,
    TaskEvent,
    TaskLog,
    WorkerSlot,
)

TASKS = Task.__table__


EDGES = TaskEdge.__table__


EVENTS = TaskEvent.__table__


SLOTS = WorkerSlot.__table__


LOGS = TaskLog.__table__


LEASES = Lease.__table__


META = Meta.__table__


RUNS = Run.__table__


POOLS = Pool.__table__


SCHEDULES = Schedule.__table__


_CHUNK = 500
"""Ids per ``IN (...)`` list, under SQLite's bound-parameter limit."""


def _event(
    task_id: str,
    source: str | None,
    target: str,
    attempt: int,
    at: str,
    detail: str | None = None,
    worker: str | None = None,
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "from_status": source,
        "to_status": target,
        "attempt": attempt,
        "worker": worker,
        "at": at,
        "detail": detail,
    }


_INSERT_EVENTS = insert(EVENTS)
_RELEASE_SLOT = (
    update(SLOTS)
    .where(SLOTS.c.task_id == bindparam("b_task"))
    .values(active=0, task_id=None, worker_id=None, updated_at=bindparam("b_at"))
)
"""Hot-path statements are built once: building a Core statement costs several times
what executing a cached one does, on every tick of the dispatcher."""


def _driver_marks(conn: Any, count: int) -> str:
    """``count`` positional placeholders in the driver's own style (sqlite3 ``?``,
    psycopg ``%s``), for SQL sent with ``exec_driver_sql``."""
    return ", ".join(["?" if conn.dialect.paramstyle == "qmark" else "%s"] * count)


def _record(session: Session, events: Sequence[dict[str, Any]]) -> None:
    if events:
        session.connection().execute(_INSERT_EVENTS, list(events))


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _release_slots(session: Session, task_ids: Sequence[str], at: str) -> None:
    if task_ids:
        session.connection().execute(_RELEASE_SLOT, [{"b_task": t, "b_at": at} for t in task_ids])
