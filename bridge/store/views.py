"""Reads for the HTTP API, the live stream and the metrics: pages, neighbours, graphs.

Every read here is bounded (a page, a limit) and walks an index, so that its cost
grows with what it returns, not with the history the database holds.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlmodel import Session

from bridge.models import IN_FLIGHT_WHERE, Task, TaskEvent
from bridge.store.tables import EDGES, EVENTS, TASKS, _chunks


def page_tasks(
    *,
    session: Session,
    limit: int,
    status: str | None = None,
    q: str | None = None,
    run: str | None = None,
    after_seq: int | None = None,
) -> list[Task]:
    """Up to ``limit`` tasks in insertion order after ``after_seq`` (a keyset cursor:
    tasks added meanwhile come after, so no page repeats or skips one)."""
    query = select(Task).order_by(TASKS.c.seq).limit(limit)
    if after_seq is not None:
        query = query.where(TASKS.c.seq > after_seq)
    if status is not None:
        query = query.where(TASKS.c.status == status)
    if run is not None:
        query = query.where(TASKS.c.run == run)
    if q:
        query = query.where(
            or_(
                TASKS.c.id.icontains(q, autoescape=True),
                TASKS.c.description.icontains(q, autoescape=True),
            )
        )
    return list(session.execute(query).scalars())


def dependents(*, session: Session, task_id: str) -> list[tuple[str, str]]:
    """The tasks that wait on ``task_id``, with their status, in insertion order."""
    rows = session.connection().execute(
        select(EDGES.c.task_id, TASKS.c.status)
        .join(TASKS, TASKS.c.id == EDGES.c.task_id)
        .where(EDGES.c.depends_on == task_id)
        .order_by(TASKS.c.seq)
    )
    return [(row.task_id, row.status) for row in rows]


def page_events(
    *, session: Session, limit: int, task_id: str | None = None, after: int | None = None
) -> list[TaskEvent]:
    """Up to ``limit`` events in order after the event id ``after``."""
    query = select(TaskEvent).order_by(EVENTS.c.id).limit(limit)
    if task_id is not None:
        query = query.where(EVENTS.c.task_id == task_id)
    if after is not None:
        query = query.where(EVENTS.c.id > after)
    return list(session.execute(query).scalars())


def events_after(*, session: Session, after: int, limit: int) -> list[dict[str, Any]]:
    """The live stream's read: events after ``after`` as plain dicts (Core, no ORM)."""
    rows = session.connection().execute(
        select(
            EVENTS.c.id,
            EVENTS.c.task_id,
            EVENTS.c.from_status,
            EVENTS.c.to_status,
            EVENTS.c.attempt,
            EVENTS.c.worker,
            EVENTS.c.at,
            EVENTS.c.detail,
        )
        .where(EVENTS.c.id > after)
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    return [dict(row._mapping) for row in rows]


def last_event_id(*, session: Session) -> int:
    return int(session.execute(select(func.max(EVENTS.c.id))).scalar() or 0)


def ping(*, session: Session) -> None:
    """Raise if the database does not answer a trivial query."""
    session.execute(text("SELECT 1")).scalar()


def in_flight_count(*, session: Session) -> int:
    return int(
        session.execute(text(f"SELECT count(*) FROM tasks WHERE {IN_FLIGHT_WHERE}")).scalar() or 0
    )


def run_count(*, session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM runs")).scalar() or 0)


def graph_of(
    *, session: Session, root: str | None, limit: int
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], bool]:
    """The tasks connected to ``root`` (through dependencies either way), or the first
    ``limit`` tasks when no root; their edges ``(dependency, task)``; and whether the
    graph was cut at ``limit`` tasks."""
    conn = session.connection()
    if root is None:
        ids = list(
            conn.execute(select(TASKS.c.id).order_by(TASKS.c.seq).limit(limit + 1)).scalars()
        )
    else:
        ids = [root]
        seen = {root}
        frontier = [root]
        while frontier and len(seen) <= limit:
            found: list[str] = []
            for chunk in _chunks(frontier):
                for row in conn.execute(
                    select(EDGES.c.task_id, EDGES.c.depends_on).where(
                        or_(EDGES.c.task_id.in_(chunk), EDGES.c.depends_on.in_(chunk))
                    )
                ):
                    for task_id in (row.task_id, row.depends_on):
                        if task_id not in seen:
                            seen.add(task_id)
                            found.append(task_id)
            ids += found
            frontier = found
    cut = len(ids) > limit
    ids = ids[:limit]
    nodes = _nodes(conn, ids)
    return nodes, _edges(conn, [n["id"] for n in nodes]), cut


def _nodes(conn: Any, ids: Sequence[str]) -> list[dict[str, Any]]:
    nodes = []
    for chunk in _chunks(list(ids)):
        nodes += [
            dict(row._mapping)
            for row in conn.execute(
                select(
                    TASKS.c.id, TASKS.c.status, TASKS.c.kind, TASKS.c.description, TASKS.c.seq
                ).where(TASKS.c.id.in_(chunk))
            )
        ]
    nodes.sort(key=lambda node: node.pop("seq"))
    return nodes


def _edges(conn: Any, ids: Sequence[str]) -> list[tuple[str, str]]:
    wanted = set(ids)
    edges = []
    for chunk in _chunks(list(ids)):
        for row in conn.execute(
            select(EDGES.c.depends_on, EDGES.c.task_id).where(EDGES.c.task_id.in_(chunk))
        ):
            if row.depends_on in wanted:
                edges.append((row.depends_on, row.task_id))
    return sorted(edges)


def recent_timings(*, session: Session, limit: int) -> list[dict[str, Any]]:
    """Kind and times of the latest ``limit`` finished tasks (newest first, by insertion
    order, which the ``seq`` index serves), for the metrics' histograms."""
    rows = session.connection().execute(
        select(TASKS.c.kind, TASKS.c.queued_at, TASKS.c.started_at, TASKS.c.completed_at)
        .where(TASKS.c.status.in_(("done", "failed")))
        .order_by(TASKS.c.seq.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in rows]


def tasks_of_jobs(*, session: Session, job_ids: Sequence[str]) -> dict[str, str]:
    """The task each RQ job id belongs to (ids of no task are left out)."""
    found: dict[str, str] = {}
    for chunk in _chunks(list(job_ids)):
        for row in session.connection().execute(
            select(TASKS.c.job_id, TASKS.c.id).where(TASKS.c.job_id.in_(chunk))
        ):
            found[row.job_id] = row.id
    return found


def counts_at(*, session: Session) -> tuple[dict[str, int], int]:
    """Tasks by status and the last event id, read in one transaction (a full scan: the
    live counts take it once, then follow the events after that id)."""
    last = last_event_id(session=session)
    counts = {
        status: int(n)
        for status, n in session.execute(
            select(TASKS.c.status, func.count()).group_by(TASKS.c.status)
        )
    }
    return counts, last
