"""Adding tasks and reading them back."""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bridge import graph
from bridge.graph import DuplicateIdError, TaskSpec
from bridge.models import Task, TaskEvent, TaskLog, WorkerSlot
from bridge.states import (
    FINISHED_BADLY,
    IN_FLIGHT,
    TaskStatus,
)
from bridge.store.engine import now, stamp
from bridge.store.errors import UnknownTask
from bridge.store.locks import lock_dependency_counts
from bridge.store.tables import (
    EDGES,
    EVENTS,
    LOGS,
    SLOTS,
    TASKS,
    _chunks,
    _driver_marks,
    _event,
    _record,
)


def declared_dependencies(raw: str | None) -> list[str] | str:
    """The ``dependencies`` column as a list of ids, or its text as stored when it is not
    a JSON list of strings (a Task Coordinator file may hold anything there: adoption
    keeps it, and the task stays blocked)."""
    if raw is None or not raw.strip():
        return []
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return raw
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(d, str) for d in value):
        return value
    return raw


def spec_of(row: Any) -> TaskSpec:
    """The definition a stored task was added with (to compare on re-add)."""
    return TaskSpec(
        id=row.id,
        description=row.description,
        kind=row.kind,
        payload=None if row.payload is None else json.loads(row.payload),
        dependencies=_as_tuple(declared_dependencies(row.dependencies)),
        priority=row.priority,
        max_attempts=row.max_attempts,
        timeout=row.timeout,
        queue=row.queue,
        pool=row.pool,
    )


def _not_before(spec: TaskSpec, at: str) -> str | None:
    """The task's earliest dispatch: its ``not_before``, or its ``delay`` after ``at``."""
    if spec.delay is None:
        return spec.not_before
    added = datetime.strptime(at, "%Y-%m-%d %H:%M:%S.%f")
    later = stamp(added + timedelta(seconds=spec.delay))
    return later if spec.not_before is None else max(later, spec.not_before)


def _as_tuple(declared: list[str] | str) -> tuple[str, ...]:
    return (declared,) if isinstance(declared, str) else tuple(declared)


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def add_tasks(
    *,
    session: Session,
    specs: Sequence[TaskSpec],
    skip_same: bool = False,
    max_payload: int = graph.DEFAULT_MAX_PAYLOAD,
    queue: str = "bridge",
    run: str | None = None,
) -> AddResult:
    """Add a graph in one transaction: all of it, or (on any error) none of it.

    With ``skip_same``, a task that already exists with the same definition is
    skipped (rerunning a file resumes); any other clash is an error. ``run`` names the
    run (``store.create_run``) the new tasks belong to; a scoped run's specs come
    through ``graph.scope`` and keep the id as written in ``local_id``.
    """
    graph.unique_ids(specs)  # before any are set aside as already stored
    lock_dependency_counts(session)  # before the dependencies' status is read
    conn = session.connection()
    own = sorted({s.id for s in specs})
    others = sorted({d for s in specs for d in s.dependencies} - set(own))
    stored: dict[str, Any] = {}
    for chunk in _chunks(own):
        for row in conn.execute(select(TASKS).where(TASKS.c.id.in_(chunk))):
            stored[row.id] = row
    # Dependencies outside the graph: only whether they exist and are done. Whole rows
    # (outputs included) cost a fan-in over 1,000 stored tasks most of its add.
    for chunk in _chunks(others):
        # Straight to the driver: SQLAlchemy's per-value work on a 500-value IN list and
        # its 500 rows cost more than SQLite's own reading of them.
        found = conn.exec_driver_sql(
            f"SELECT id, status FROM tasks WHERE id IN ({_driver_marks(conn, len(chunk))})",
            tuple(chunk),
        )
        for row in found:
            stored[row.id] = row
    result = AddResult()
    new_specs: list[TaskSpec] = []
    for spec in specs:
        row = stored.get(spec.id)
        if row is None:
            new_specs.append(spec)
        elif skip_same and graph.same_definition(spec, spec_of(row)):
            result.skipped.append(spec.id)
        elif skip_same:
            raise DuplicateIdError(f"task {spec.id!r} already exists with a different definition")
        else:
            raise DuplicateIdError(f"task {spec.id!r} already exists")
    graph.check_new_graph(new_specs, existing=stored.keys(), max_payload=max_payload)
    if not new_specs:
        return result

    at = now()
    next_seq = (conn.execute(select(func.max(TASKS.c.seq))).scalar() or 0) + 1
    task_rows = []
    edge_rows: list[tuple[str, str]] = []
    for offset, spec in enumerate(new_specs):
        pending = sum(
            1
            for dep in spec.dependencies
            if dep not in stored or stored[dep].status != TaskStatus.DONE.value
        )
        task_rows.append(
            {
                "id": spec.id,
                "description": spec.description,
                "status": TaskStatus.AVAILABLE.value,
                "dependencies": json.dumps(list(spec.dependencies), ensure_ascii=False),
                "created_at": at,
                "updated_at": at,
                "kind": spec.kind,
                "payload": spec.payload_json(),
                "priority": spec.priority,
                "attempts": 0,
                "max_attempts": spec.max_attempts,
                "failures": 0,
                "timeout": spec.timeout,
                "pending_deps": pending,
                "seq": next_seq + offset,
                "queue": spec.queue or queue,
                "pool": spec.pool,
                "not_before": _not_before(spec, at),
                "run": run,
                "local_id": spec.local_id,
            }
        )
        edge_rows.extend((spec.id, dep) for dep in spec.dependencies)
    try:
        conn.execute(insert(TASKS), task_rows)
        if edge_rows:  # a fan-in's thousand edges: driver rows, not SQLAlchemy parameters
            conn.exec_driver_sql(
                f"INSERT INTO task_edges (task_id, depends_on) VALUES ({_driver_marks(conn, 2)})",
                edge_rows,
            )
    except IntegrityError as exc:  # a concurrent add of the same id
        raise DuplicateIdError(f"task already exists: {exc.orig}") from None
    _record(session, [_event(s.id, None, "available", 0, at, "added") for s in new_specs])
    result.added = [s.id for s in new_specs]
    return result


def get_task(*, session: Session, task_id: str) -> Task | None:
    return session.get(Task, task_id)


def require_task(*, session: Session, task_id: str) -> Task:
    task = get_task(session=session, task_id=task_id)
    if task is None:
        raise UnknownTask(f"no task {task_id!r}")
    return task


def list_tasks(
    *, session: Session, status: TaskStatus | None = None, run: str | None = None
) -> list[Task]:
    """Tasks in the order they were added; only those of ``status`` and of ``run``."""
    query = select(Task).order_by(TASKS.c.seq)
    if status is not None:
        query = query.where(TASKS.c.status == status.value)
    if run is not None:
        query = query.where(TASKS.c.run == run)
    return list(session.execute(query).scalars())


def list_events(
    *, session: Session, task_id: str | None = None, after: int | None = None
) -> list[TaskEvent]:
    """Events in order; ``after`` an event id, only the newer ones (``events --follow``)."""
    query = select(TaskEvent).order_by(EVENTS.c.id)
    if task_id is not None:
        query = query.where(EVENTS.c.task_id == task_id)
    if after is not None:
        query = query.where(EVENTS.c.id > after)
    return list(session.execute(query).scalars())


def list_logs(*, session: Session, task_id: str, attempt: int | None = None) -> list[TaskLog]:
    """A task's ``ctx.log`` lines in the order they were kept (one attempt, or all)."""
    query = select(TaskLog).where(LOGS.c.task_id == task_id).order_by(LOGS.c.id)
    if attempt is not None:
        query = query.where(LOGS.c.attempt == attempt)
    return list(session.execute(query).scalars())


def list_slots(*, session: Session) -> list[WorkerSlot]:
    return list(session.execute(select(WorkerSlot).order_by(SLOTS.c.slot)).scalars())


def dependents_blocked_by(*, session: Session, task_ids: Sequence[str]) -> int:
    """How many waiting tasks have a dependency among ``task_ids`` (direct only)."""
    waiting: set[str] = set()
    for chunk in _chunks(list(task_ids)):
        query = select(EDGES.c.task_id).where(EDGES.c.depends_on.in_(chunk)).distinct()
        waiting.update(session.execute(query).scalars())
    return len(waiting)


def dependency_states(*, session: Session, task_id: str) -> list[tuple[str, str]]:
    """Each dependency of a task with its status, for ``bridge show``."""
    rows = session.connection().execute(
        select(EDGES.c.depends_on, TASKS.c.status)
        .join(TASKS, TASKS.c.id == EDGES.c.depends_on)
        .where(EDGES.c.task_id == task_id)
        .order_by(TASKS.c.seq)
    )
    return [(row.depends_on, row.status) for row in rows]


@dataclass(frozen=True)
class Progress:
    """What ``bridge wait`` needs to know: counts, and whether anything can still run."""

    counts: dict[str, int]
    ready: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, status: TaskStatus) -> int:
        return self.counts.get(status.value, 0)

    @property
    def finished(self) -> bool:
        return self.count(TaskStatus.DONE) == self.total

    @property
    def stuck(self) -> bool:
        """Nothing in flight, nothing ready, and something failed or was cancelled.

        Then every task still waiting depends (transitively) on a failed or
        cancelled one: without ``bridge retry`` nothing more can run.
        """
        bad = sum(self.count(s) for s in FINISHED_BADLY)
        in_flight = sum(self.count(s) for s in IN_FLIGHT)
        return bad > 0 and in_flight == 0 and self.ready == 0


def progress(*, session: Session, task_ids: Sequence[str] | None = None) -> Progress:
    """Counts by status, and how many tasks could start now: over every task, or
    only over ``task_ids`` (``bridge run FILE`` judges FILE's tasks alone)."""
    if task_ids is None:
        counts = {
            status: n
            for status, n in session.execute(
                select(TASKS.c.status, func.count()).group_by(TASKS.c.status)
            )
        }
        ready = session.execute(
            text("SELECT count(*) FROM tasks WHERE status = 'available' AND pending_deps = 0")
        ).scalar()
        return Progress(counts=counts, ready=int(ready or 0))
    counts = {}
    ready = 0
    for chunk in _chunks(sorted(set(task_ids))):
        query = (
            select(TASKS.c.status, func.count())
            .where(TASKS.c.id.in_(chunk))
            .group_by(TASKS.c.status)
        )
        for status, n in session.execute(query):
            counts[status] = counts.get(status, 0) + n
        ready += session.execute(
            select(func.count()).where(
                TASKS.c.id.in_(chunk),
                TASKS.c.status == TaskStatus.AVAILABLE.value,
                TASKS.c.pending_deps == 0,
            )
        ).scalar_one()
    return Progress(counts=counts, ready=ready)


def task_dict(task: Task) -> dict[str, Any]:
    """A task as ``--json`` prints it: the seed's field names, dependencies as a list."""
    return {
        "id": task.id,
        "description": task.description,
        "status": task.status,
        "worker": task.worker,
        "dependencies": declared_dependencies(task.dependencies),
        "output": None if task.output is None else _maybe_json(task.output),
        "error": task.error,
        "started_at": task.started_at,
        "completed_at": task.completed_at,
        "created_at": task.created_at,
        "kind": task.kind,
        "payload": None if task.payload is None else json.loads(task.payload),
        "priority": task.priority,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "failures": task.failures,
        "timeout": task.timeout,
        "job_id": task.job_id,
        "queued_at": task.queued_at,
        "not_before": task.not_before,
        "pending_dependencies": task.pending_deps,
        "note": task.note,
        "queue": task.queue,
        "pool": task.pool,
        "run": task.run,
        "local_id": task.local_id,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "claim_expires_at": task.claim_expires_at,
    }


def _maybe_json(text_value: str) -> Any:
    try:
        return json.loads(text_value)
    except json.JSONDecodeError:
        return text_value
