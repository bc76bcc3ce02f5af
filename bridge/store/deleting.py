"""Deleting chosen tasks (``bridge delete ID...``) and whole runs (``delete --run``).

All or nothing: every task named must be finished (done, failed, cancelled) or not yet
started (available, never dispatched), hold no worker slot, and no task outside those
deleted may depend on it unless that task is finished too. Then the tasks go with
their events, their logs and every edge to or from them, in the caller's transaction.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, or_, select, update
from sqlmodel import Session

from bridge.models import TaskLog
from bridge.states import TaskStatus
from bridge.store.engine import TaskStateError
from bridge.store.locks import lock_dependency_counts
from bridge.store.runs import RUNS
from bridge.store.tables import EDGES, EVENTS, SLOTS, TASKS, _chunks

LOGS = TaskLog.__table__
FINISHED = (TaskStatus.DONE.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)


@dataclass
class DeletedTasks:
    deleted: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    """Runs deleted with them (their last task went, or ``delete --run``)."""


def delete_tasks(
    *, session: Session, task_ids: Sequence[str], run: str | None = None
) -> DeletedTasks:
    """Delete ``task_ids`` if the rule above allows all of them, else change nothing.

    With ``run``, its row goes too (``delete --run``); otherwise a run left with no
    task is deleted. ``TaskStateError`` names the first task that stops it.
    """
    lock_dependency_counts(session)  # the dispatcher decrements dependents' counts
    conn = session.connection()
    wanted = list(dict.fromkeys(task_ids))
    going = set(wanted)
    rows = {}
    for chunk in _chunks(wanted):
        query = select(TASKS.c.id, TASKS.c.status, TASKS.c.attempts, TASKS.c.run).where(
            TASKS.c.id.in_(chunk)
        )
        for row in conn.execute(query.with_for_update()):
            rows[row.id] = row
    for task_id in wanted:
        row = rows.get(task_id)
        if row is None:
            raise TaskStateError(f"no task {task_id!r}")
        # A finished run's available tasks are blocked for good: they go with the run.
        not_started = row.status == TaskStatus.AVAILABLE.value and (
            row.attempts == 0 or run is not None
        )
        if row.status not in FINISHED and not not_started:
            raise TaskStateError(
                f"cannot delete task {task_id!r}: it is {row.status}"
                + (" and was dispatched before" if row.status == "available" else "")
                + " (only finished tasks, or tasks not yet started)"
            )
    for chunk in _chunks(wanted):
        held = conn.execute(select(SLOTS.c.task_id).where(SLOTS.c.task_id.in_(chunk))).first()
        if held is not None:
            raise TaskStateError(f"cannot delete task {held.task_id!r}: a worker slot holds it")
        dependents = conn.execute(
            select(EDGES.c.task_id, EDGES.c.depends_on, TASKS.c.status)
            .join(TASKS, TASKS.c.id == EDGES.c.task_id)
            .where(EDGES.c.depends_on.in_(chunk))
            .order_by(TASKS.c.seq)
        )
        for dependent, dependency, status in dependents:
            if dependent not in going and status not in FINISHED:
                raise TaskStateError(
                    f"cannot delete task {dependency!r}: task {dependent!r} depends on it and"
                    f" is {status} (delete or cancel it too)"
                )
    # A finished dependent kept (failed or cancelled, so it may be retried) loses the
    # edge: it must not wait, once retried, for a task that is gone.
    not_done = [t for t in wanted if rows[t].status != TaskStatus.DONE.value]
    for chunk in _chunks(not_done):
        kept = conn.execute(
            select(EDGES.c.task_id, func.count(), TASKS.c.pending_deps)
            .join(TASKS, TASKS.c.id == EDGES.c.task_id)
            .where(EDGES.c.depends_on.in_(chunk))
            .group_by(EDGES.c.task_id, TASKS.c.pending_deps)
        ).all()
        for dependent, n, pending in kept:
            if dependent not in going:
                conn.execute(
                    update(TASKS)
                    .where(TASKS.c.id == dependent)
                    .values(pending_deps=max(0, pending - n))
                )
    for chunk in _chunks(wanted):
        conn.execute(delete(EVENTS).where(EVENTS.c.task_id.in_(chunk)))
        conn.execute(delete(LOGS).where(LOGS.c.task_id.in_(chunk)))
        conn.execute(
            delete(EDGES).where(or_(EDGES.c.task_id.in_(chunk), EDGES.c.depends_on.in_(chunk)))
        )
        conn.execute(delete(TASKS).where(TASKS.c.id.in_(chunk)))
    result = DeletedTasks(deleted=wanted)
    touched = {rows[t].run for t in wanted if rows[t].run is not None}
    if run is not None:
        touched.add(run)
    for name in sorted(touched):
        left = conn.execute(select(TASKS.c.id).where(TASKS.c.run == name).limit(1)).first()
        if name == run or left is None:
            conn.execute(delete(RUNS).where(RUNS.c.name == name))
            result.runs.append(name)
    return result
