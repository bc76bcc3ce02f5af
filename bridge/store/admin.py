"""The admin commands: retry, cancel, clean."""

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlmodel import Session

from bridge.models import Task
from bridge.states import (
    FINISHED_BADLY,
    IN_FLIGHT,
    TaskStatus,
    sources_of,
)
from bridge.store.engine import TaskStateError, now
from bridge.store.runs import RUNS
from bridge.store.tables import (
    EDGES,
    EVENTS,
    LOGS,
    SLOTS,
    TASKS,
    _event,
    _record,
    _release_slots,
)
from bridge.store.tasks import require_task


def retry_task(*, session: Session, task_id: str) -> Task:
    """A failed or cancelled task back to ``available`` with fresh attempts; history kept."""
    task = require_task(session=session, task_id=task_id)
    if TaskStatus(task.status) not in FINISHED_BADLY:
        raise TaskStateError(
            f"cannot retry task {task_id!r}: it is {task.status} (only failed or cancelled tasks)"
        )
    at = now()
    changed = (
        session.connection()
        .execute(
            update(TASKS)
            .where(TASKS.c.id == task_id, TASKS.c.status.in_(sources_of(TaskStatus.AVAILABLE)))
            .where(TASKS.c.status == task.status)
            .values(
                status="available",
                failures=0,
                not_before=None,
                error=None,
                completed_at=None,
                note="retried by user",
                updated_at=at,
            )
        )
        .rowcount
    )
    if changed != 1:
        raise TaskStateError(f"task {task_id!r} changed while retrying it; try again")
    _record(
        session, [_event(task_id, task.status, "available", task.attempts, at, "retried by user")]
    )
    session.expire_all()
    return require_task(session=session, task_id=task_id)


@dataclass(frozen=True)
class Cancelled:
    task_id: str
    previous: TaskStatus
    job_id: str | None
    queue: str


def cancel_task(*, session: Session, task_id: str) -> Cancelled:
    """Cancel in the database; the caller then removes or stops the RQ job.

    The database decides: any report the job still sends is ignored by fencing.
    """
    task = require_task(session=session, task_id=task_id)
    previous = TaskStatus(task.status)
    if previous not in sources_of_set(TaskStatus.CANCELLED):
        raise TaskStateError(f"cannot cancel task {task_id!r}: it is already {task.status}")
    at = now()
    changed = (
        session.connection()
        .execute(
            update(TASKS)
            .where(TASKS.c.id == task_id, TASKS.c.status == previous.value)
            .values(status="cancelled", completed_at=at, updated_at=at, note="cancelled by user")
        )
        .rowcount
    )
    if changed != 1:
        raise TaskStateError(f"task {task_id!r} changed while cancelling it; try again")
    _release_slots(session, [task_id], at)
    _record(
        session,
        [_event(task_id, previous.value, "cancelled", task.attempts, at, "cancelled by user")],
    )
    return Cancelled(task_id, previous, task.job_id if previous in IN_FLIGHT else None, task.queue)


def sources_of_set(target: TaskStatus) -> set[TaskStatus]:
    return {TaskStatus(s) for s in sources_of(target)}


@dataclass(frozen=True)
class Cleaned:
    count: int
    in_flight: list[tuple[str, str]]
    """``(job id, queue)`` of every attempt that was in flight: the caller fences them
    off in Redis, so none of them starts and a running one is stopped."""


def clean(*, session: Session) -> Cleaned:
    """Delete every task, edge, event, log line and run, and free every slot (pools and
    schedules stay: they are set-up, not history).

    Fencing tokens are not reset (they live in ``bridge_meta``): a report from an
    attempt started before the clean can never match a task added after it.
    """
    conn = session.connection()
    count = int(conn.execute(select(func.count()).select_from(TASKS)).scalar() or 0)
    in_flight = [
        (row.job_id, row.queue)
        for row in conn.execute(
            select(TASKS.c.job_id, TASKS.c.queue).where(
                TASKS.c.status.in_([s.value for s in IN_FLIGHT]), TASKS.c.job_id.is_not(None)
            )
        )
    ]
    conn.execute(delete(EVENTS))
    conn.execute(delete(LOGS))
    conn.execute(delete(EDGES))
    conn.execute(delete(TASKS))
    conn.execute(delete(RUNS))
    conn.execute(update(SLOTS).values(active=0, task_id=None, worker_id=None, updated_at=now()))
    return Cleaned(count, in_flight)
