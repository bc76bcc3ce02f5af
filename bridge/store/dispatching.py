"""Slots, claiming ready tasks, and re-dispatching lost ones."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlmodel import Session

from bridge.messages import Dispatch, job_id_for
from bridge.models import IN_FLIGHT_WHERE
from bridge.recovery import Flight
from bridge.states import (
    IN_FLIGHT,
    TaskStatus,
)
from bridge.store import schema
from bridge.store.claims import NOT_A_CLAIM
from bridge.store.engine import StoreError, now
from bridge.store.tables import SLOTS, TASKS, _chunks, _event, _record


def reset_slots(*, session: Session, slots: int) -> list[str]:
    """Free every slot, then give one to each task really in flight (oldest first).

    Called when a dispatcher starts: assignments recorded on the tasks are kept,
    the slot table is rebuilt from them. Returns the in-flight task ids. Claimed
    external tasks hold no slot (they have no RQ job) and are left out.
    """
    conn = session.connection()
    at = now()
    in_flight = [
        row.id
        for row in conn.execute(
            select(TASKS.c.id)
            .where(text(IN_FLIGHT_WHERE), NOT_A_CLAIM)
            .order_by(TASKS.c.queued_at, TASKS.c.seq)
        )
    ]
    wanted = max(slots, len(in_flight))
    conn.execute(delete(SLOTS).where(SLOTS.c.slot > wanted))
    existing = {row.slot for row in conn.execute(select(SLOTS.c.slot))}
    missing = [
        {"slot": n, "active": 0, "updated_at": at}
        for n in range(1, wanted + 1)
        if n not in existing
    ]
    if missing:
        conn.execute(insert(SLOTS), missing)
    conn.execute(update(SLOTS).values(active=0, task_id=None, worker_id=None, updated_at=at))
    workers = {
        row.id: row.worker
        for chunk in _chunks(in_flight)
        for row in conn.execute(select(TASKS.c.id, TASKS.c.worker).where(TASKS.c.id.in_(chunk)))
    }
    if in_flight:
        conn.execute(
            update(SLOTS)
            .where(SLOTS.c.slot == bindparam("b_slot"))
            .values(active=1, task_id=bindparam("b_task"), worker_id=bindparam("b_worker")),
            [
                {"b_slot": n, "b_task": task_id, "b_worker": workers.get(task_id)}
                for n, task_id in enumerate(in_flight, start=1)
            ],
        )
    return in_flight


_READY_SQL = (
    "SELECT id, kind, payload, timeout, attempts, queue FROM tasks{hint}"
    " WHERE status = 'available' AND pending_deps = 0"
    " AND (not_before IS NULL OR not_before <= :now)"
    " ORDER BY priority DESC, seq LIMIT :limit"
)
"""Literal status and count so the partial index ``ix_tasks_ready`` applies. SQLite
needs the hint: without ANALYZE statistics its planner may scan every available task,
blocked ones included, and sort them on every tick. PostgreSQL takes the partial index
by itself (no index on ``status`` alone competes with it)."""


_READY = {
    "sqlite": text(_READY_SQL.format(hint=" INDEXED BY ix_tasks_ready")),
    "other": text(_READY_SQL.format(hint="")),
}

_EXCLUDE = " AND kind NOT IN :exclude"
"""External kinds: agents claim those tasks (``store.claim_external``), RQ never runs them."""

_READY_EXCLUDING = {
    name: text(query.text.replace(" ORDER BY", _EXCLUDE + " ORDER BY")).bindparams(
        bindparam("exclude", expanding=True)
    )
    for name, query in _READY.items()
}


def _ready_query(session: Session, excluding: bool = False) -> Any:
    dialect = session.get_bind().dialect.name
    return (_READY_EXCLUDING if excluding else _READY)["sqlite" if dialect == "sqlite" else "other"]


def claim_ready(
    *,
    session: Session,
    slots: int,
    max_output: int = 1024 * 1024,
    exclude_kinds: Sequence[str] = (),
) -> list[Dispatch]:
    """Move ready tasks into free slots as ``queued``: priority first, then age.

    At most ``slots`` tasks are ever in flight: after ``--slots`` is lowered, tasks
    already in flight above the new limit finish first and nothing new is claimed
    until the count is below it. Work is proportional to the tasks claimed (partial
    index), never to history. Tasks of ``exclude_kinds`` (external kinds) are never
    claimed here: agents claim them.
    """
    conn = session.connection()
    rows = conn.execute(select(SLOTS.c.slot, SLOTS.c.active).order_by(SLOTS.c.slot)).all()
    busy = sum(1 for r in rows if r.active)
    free = [r.slot for r in rows if not r.active][: max(0, slots - busy)]
    if not free:
        return []
    at = now()
    params: dict[str, Any] = {"now": at, "limit": len(free)}
    if exclude_kinds:
        params["exclude"] = list(exclude_kinds)
    ready = conn.execute(_ready_query(session, bool(exclude_kinds)), params).all()
    if not ready:
        return []
    dispatches = _new_attempts(session, ready, max_output)
    _mark_queued(session, dispatches, ["available"] * len(dispatches), at, "dispatched", None)
    conn.execute(
        update(SLOTS)
        .where(SLOTS.c.slot == bindparam("b_slot"))
        .values(active=1, task_id=bindparam("b_task"), worker_id=None, updated_at=at),
        [{"b_slot": slot, "b_task": d.task_id} for slot, d in zip(free, dispatches, strict=False)],
    )
    return dispatches


def _new_attempts(session: Session, rows: Sequence[Any], max_output: int) -> list[Dispatch]:
    """One new attempt per row, each with a fresh fencing token in its job id."""
    namespace = schema.namespace(session=session)
    first = schema.take_tokens(session=session, count=len(rows))
    return [
        Dispatch(
            task_id=r.id,
            attempt=r.attempts + 1,
            job_id=job_id_for(r.id, namespace, first + n),
            kind=r.kind,
            payload=r.payload,
            timeout=r.timeout,
            queue=r.queue,
            namespace=namespace,
            max_output=max_output,
        )
        for n, r in enumerate(rows)
    ]


def _mark_queued(
    session: Session,
    dispatches: Sequence[Dispatch],
    sources: Sequence[str],
    at: str,
    detail: str,
    note: str | None,
) -> None:
    """Commit ``queued`` for a new attempt, each task guarded on its status and attempt."""
    stmt = (
        update(TASKS)
        .where(
            TASKS.c.id == bindparam("b_id"),
            TASKS.c.attempts == bindparam("b_prev"),
            TASKS.c.status == bindparam("b_src"),
        )
        .values(
            status="queued",
            attempts=bindparam("b_attempt"),
            job_id=bindparam("b_job"),
            queued_at=at,
            updated_at=at,
            not_before=None,
            worker=None,
            started_at=None,
            note=note,
        )
    )
    params = [
        {
            "b_id": d.task_id,
            "b_prev": d.attempt - 1,
            "b_src": source,
            "b_attempt": d.attempt,
            "b_job": d.job_id,
        }
        for d, source in zip(dispatches, sources, strict=True)
    ]
    changed = session.connection().execute(stmt, params).rowcount
    if changed != len(dispatches):
        raise StoreError(f"dispatch raced: {changed} of {len(dispatches)} tasks changed")
    _record(
        session,
        [
            _event(d.task_id, source, "queued", d.attempt, at, detail)
            for d, source in zip(dispatches, sources, strict=True)
        ],
    )


def in_flight(*, session: Session) -> list[Flight]:
    """Every task in flight on an RQ job, for reconciliation (claims have none to judge:
    their lease decides, ``expire_claims``)."""
    rows = session.connection().execute(
        select(
            TASKS.c.id,
            TASKS.c.status,
            TASKS.c.attempts,
            TASKS.c.job_id,
            TASKS.c.queued_at,
            TASKS.c.started_at,
            TASKS.c.timeout,
            TASKS.c.worker,
            TASKS.c.queue,
        ).where(text(IN_FLIGHT_WHERE), NOT_A_CLAIM)
    )
    return [
        Flight(
            r.id,
            TaskStatus(r.status),
            r.attempts,
            r.job_id,
            r.queued_at,
            r.started_at,
            r.timeout,
            r.worker,
            r.queue,
        )
        for r in rows
    ]


def redispatch(
    *, session: Session, tasks: Sequence[Flight], reason: str, max_output: int = 1024 * 1024
) -> list[Dispatch]:
    """A new attempt for in-flight tasks whose job was lost; the old attempt is fenced off
    (its job id, and so its token, is no longer the task's)."""
    current = {
        r.id: r
        for chunk in _chunks([t.task_id for t in tasks])
        for r in session.connection().execute(
            select(
                TASKS.c.id,
                TASKS.c.kind,
                TASKS.c.payload,
                TASKS.c.timeout,
                TASKS.c.attempts,
                TASKS.c.status,
                TASKS.c.job_id,
                TASKS.c.queue,
            ).where(TASKS.c.id.in_(chunk))
        )
    }
    rows = []
    for t in tasks:
        row = current.get(t.task_id)
        if row is None or row.job_id != t.job_id or TaskStatus(row.status) not in IN_FLIGHT:
            continue  # resolved meanwhile
        rows.append(row)
    dispatches = _new_attempts(session, rows, max_output) if rows else []
    if dispatches:
        _mark_queued(session, dispatches, [r.status for r in rows], now(), reason, reason)
    return dispatches


def next_wakeup(*, session: Session) -> str | None:
    """The earliest end of a retry backoff, so the dispatcher wakes up for it."""
    hint = " INDEXED BY ix_tasks_backoff" if session.get_bind().dialect.name == "sqlite" else ""
    return session.execute(
        text(
            f"SELECT min(not_before) FROM tasks{hint}"
            " WHERE status = 'available' AND not_before IS NOT NULL"
        )
    ).scalar()
