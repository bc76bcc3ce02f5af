"""All SQL lives here: the only module that talks to the database.

Every state change is a guarded compare-and-set (``UPDATE ... WHERE status IN
(...) AND attempts = ...``) in the same transaction as its ``task_events`` row.
Hot paths use SQLAlchemy Core on the mapped tables, not ORM object loads.
"""

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, delete, event, func, insert, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, create_engine

from bridge import graph
from bridge.graph import GraphError, TaskSpec
from bridge.messages import Dispatch, Report, job_id_for, truncate
from bridge.models import Lease, Task, TaskEdge, TaskEvent, WorkerSlot
from bridge.recovery import Flight
from bridge.states import (
    FINISHED_BADLY,
    IN_FLIGHT,
    ReportKind,
    TaskStatus,
    decide_report,
    sources_of,
)

TASKS = Task.__table__
EDGES = TaskEdge.__table__
EVENTS = TaskEvent.__table__
SLOTS = WorkerSlot.__table__
LEASES = Lease.__table__

BUSY_TIMEOUT_MS = 30_000
"""How long a writer waits for SQLite's lock before giving up: CLI commands run
while the dispatcher is busy wait instead of failing with "database is locked"."""

_CHUNK = 500
"""Ids per ``IN (...)`` list, under SQLite's bound-parameter limit."""


class StoreError(RuntimeError):
    """A database problem the user can act on; the CLI prints it as one line."""


class TaskStateError(StoreError):
    """The task exists but its state does not allow the request."""


def now() -> str:
    return stamp(datetime.now(timezone.utc))


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


# --------------------------------------------------------------------------- engine


def open_engine(url: str) -> Engine:
    """One engine per process, schema created on first use.

    SQLite gets WAL (readers never block the dispatcher), a busy timeout, foreign
    keys, and ``BEGIN IMMEDIATE`` for writes so two writers queue on the lock
    instead of failing when one upgrades a read transaction.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {url!r}") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_path(parsed.database)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # missing driver, bad options
            raise StoreError(f"cannot use database {url!r}: {exc}") from None
    try:
        SQLModel.metadata.create_all(engine)
    except OperationalError as exc:
        raise StoreError(f"cannot open database {_where(url)}: {exc.orig}") from None
    return engine


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return repr(parsed.database or ":memory:")
    return repr(parsed.render_as_string(hide_password=True))


def _check_sqlite_path(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = os.path.dirname(os.path.abspath(database))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise StoreError(f"cannot open database {database!r}: {folder!r} is not a directory")
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open database {database!r}: directory {folder!r} does not exist")
    if os.path.exists(database):
        if not os.access(database, os.R_OK | os.W_OK):
            raise StoreError(
                f"cannot open database {database!r}: file is not readable and writable"
            )
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot create database {database!r}: directory {folder!r} is not writable"
        )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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
    """A write transaction: committed on success, rolled back (file untouched) on error."""
    try:
        with Session(engine.execution_options(bridge_write=True)) as session:
            with session.begin():
                yield session
    except OperationalError as exc:
        raise StoreError(f"database error: {exc.orig}") from None


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    try:
        with Session(engine) as session:
            yield session
    except OperationalError as exc:
        raise StoreError(f"database error: {exc.orig}") from None


# --------------------------------------------------------------------------- helpers


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


def _record(session: Session, events: Sequence[dict[str, Any]]) -> None:
    if events:
        session.connection().execute(insert(EVENTS), list(events))


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def spec_of(row: Any) -> TaskSpec:
    """The definition a stored task was added with (to compare on re-add)."""
    return TaskSpec(
        id=row.id,
        description=row.description,
        kind=row.kind,
        payload=None if row.payload is None else json.loads(row.payload),
        dependencies=tuple(json.loads(row.dependencies or "[]")),
        priority=row.priority,
        max_attempts=row.max_attempts,
        timeout=row.timeout,
    )


# --------------------------------------------------------------------------- adding


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
) -> AddResult:
    """Add a graph in one transaction: all of it, or (on any error) none of it.

    With ``skip_same``, a task that already exists with the same definition is
    skipped (rerunning a file resumes); any other clash is an error.
    """
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise GraphError(f"duplicate task id {spec.id!r}")
        seen.add(spec.id)
    conn = session.connection()
    referenced = sorted({s.id for s in specs} | {d for s in specs for d in s.dependencies})
    stored: dict[str, Any] = {}
    for chunk in _chunks(referenced):
        for row in conn.execute(select(TASKS).where(TASKS.c.id.in_(chunk))):
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
            raise GraphError(f"task {spec.id!r} already exists with a different definition")
        else:
            raise GraphError(f"task {spec.id!r} already exists")
    graph.check_new_graph(new_specs, existing=stored.keys(), max_payload=max_payload)
    if not new_specs:
        return result

    at = now()
    next_seq = (conn.execute(select(func.max(TASKS.c.seq))).scalar() or 0) + 1
    task_rows = []
    edge_rows = []
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
            }
        )
        edge_rows.extend({"task_id": spec.id, "depends_on": dep} for dep in spec.dependencies)
    try:
        conn.execute(insert(TASKS), task_rows)
        if edge_rows:
            conn.execute(insert(EDGES), edge_rows)
    except IntegrityError as exc:  # a concurrent add of the same id
        raise GraphError(f"task already exists: {exc.orig}") from None
    _record(session, [_event(s.id, None, "available", 0, at, "added") for s in new_specs])
    result.added = [s.id for s in new_specs]
    return result


# --------------------------------------------------------------------------- reading


def get_task(*, session: Session, task_id: str) -> Task | None:
    return session.get(Task, task_id)


def require_task(*, session: Session, task_id: str) -> Task:
    task = get_task(session=session, task_id=task_id)
    if task is None:
        raise TaskStateError(f"no task {task_id!r}")
    return task


def list_tasks(*, session: Session, status: TaskStatus | None = None) -> list[Task]:
    query = select(Task).order_by(TASKS.c.seq)
    if status is not None:
        query = query.where(TASKS.c.status == status.value)
    return list(session.execute(query).scalars())


def list_events(*, session: Session, task_id: str | None = None) -> list[TaskEvent]:
    query = select(TaskEvent).order_by(EVENTS.c.id)
    if task_id is not None:
        query = query.where(EVENTS.c.task_id == task_id)
    return list(session.execute(query).scalars())


def list_slots(*, session: Session) -> list[WorkerSlot]:
    return list(session.execute(select(WorkerSlot).order_by(SLOTS.c.slot)).scalars())


def dependents_blocked_by(*, session: Session, task_ids: Sequence[str]) -> int:
    """How many waiting tasks have a dependency among ``task_ids`` (direct only)."""
    if not task_ids:
        return 0
    query = select(func.count(func.distinct(EDGES.c.task_id))).where(
        EDGES.c.depends_on.in_(list(task_ids)[:_CHUNK])
    )
    return int(session.execute(query).scalar() or 0)


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


def progress(*, session: Session) -> Progress:
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


# --------------------------------------------------------------------------- admin


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
    return Cancelled(task_id, previous, task.job_id if previous in IN_FLIGHT else None)


def sources_of_set(target: TaskStatus) -> set[TaskStatus]:
    return {TaskStatus(s) for s in sources_of(target)}


def clean(*, session: Session) -> int:
    """Delete every task, edge and event, and free every slot."""
    conn = session.connection()
    count = int(conn.execute(select(func.count()).select_from(TASKS)).scalar() or 0)
    conn.execute(delete(EVENTS))
    conn.execute(delete(EDGES))
    conn.execute(delete(TASKS))
    conn.execute(update(SLOTS).values(active=0, task_id=None, worker_id=None, updated_at=now()))
    return count


# --------------------------------------------------------------------------- slots


def reset_slots(*, session: Session, slots: int) -> list[str]:
    """Free every slot, then give one to each task really in flight (oldest first).

    Called when a dispatcher starts: assignments recorded on the tasks are kept,
    the slot table is rebuilt from them. Returns the in-flight task ids.
    """
    conn = session.connection()
    at = now()
    in_flight = [
        row.id
        for row in conn.execute(
            select(TASKS.c.id)
            .where(TASKS.c.status.in_([s.value for s in IN_FLIGHT]))
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


def _release_slots(session: Session, task_ids: Sequence[str], at: str) -> None:
    if task_ids:
        session.connection().execute(
            update(SLOTS)
            .where(SLOTS.c.task_id == bindparam("b_task"))
            .values(active=0, task_id=None, worker_id=None, updated_at=at),
            [{"b_task": t} for t in task_ids],
        )


# --------------------------------------------------------------------------- dispatching


_READY_SQL = (
    "SELECT id, kind, payload, timeout, attempts FROM tasks{hint}"
    " WHERE status = 'available' AND pending_deps = 0"
    " AND (not_before IS NULL OR not_before <= :now)"
    " ORDER BY priority DESC, seq LIMIT :limit"
)
"""Literal status and count so the partial index ``ix_tasks_ready`` applies. SQLite
needs the hint: without ANALYZE statistics its planner prefers ``ix_tasks_status``
and sorts every available task, blocked ones included, on every tick."""
_READY = {
    "sqlite": text(_READY_SQL.format(hint=" INDEXED BY ix_tasks_ready")),
    "other": text(_READY_SQL.format(hint="")),
}


def _ready_query(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return _READY["sqlite" if dialect == "sqlite" else "other"]


def claim_ready(*, session: Session, slots: int) -> list[Dispatch]:
    """Move ready tasks into free slots as ``queued``: priority first, then age.

    Work is proportional to the tasks claimed (partial index), never to history.
    """
    conn = session.connection()
    free = [
        row.slot
        for row in conn.execute(
            select(SLOTS.c.slot)
            .where(SLOTS.c.active == 0, SLOTS.c.slot <= slots)
            .order_by(SLOTS.c.slot)
        )
    ]
    if not free:
        return []
    at = now()
    rows = conn.execute(_ready_query(session), {"now": at, "limit": len(free)}).all()
    if not rows:
        return []
    dispatches = [
        Dispatch(
            r.id, r.attempts + 1, job_id_for(r.id, r.attempts + 1), r.kind, r.payload, r.timeout
        )
        for r in rows
    ]
    _mark_queued(session, dispatches, ["available"] * len(dispatches), at, "dispatched", None)
    conn.execute(
        update(SLOTS)
        .where(SLOTS.c.slot == bindparam("b_slot"))
        .values(active=1, task_id=bindparam("b_task"), worker_id=None, updated_at=at),
        [{"b_slot": slot, "b_task": d.task_id} for slot, d in zip(free, dispatches, strict=False)],
    )
    return dispatches


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
        ).where(TASKS.c.status.in_([s.value for s in IN_FLIGHT]))
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
        )
        for r in rows
    ]


def redispatch(*, session: Session, tasks: Sequence[Flight], reason: str) -> list[Dispatch]:
    """A new attempt for in-flight tasks whose job was lost; the old attempt is fenced off."""
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
            ).where(TASKS.c.id.in_(chunk))
        )
    }
    dispatches = []
    sources = []
    for t in tasks:
        row = current.get(t.task_id)
        if row is None or row.attempts != t.attempt or TaskStatus(row.status) not in IN_FLIGHT:
            continue  # resolved meanwhile
        attempt = row.attempts + 1
        dispatches.append(
            Dispatch(
                row.id, attempt, job_id_for(row.id, attempt), row.kind, row.payload, row.timeout
            )
        )
        sources.append(row.status)
    if dispatches:
        _mark_queued(session, dispatches, sources, now(), reason, reason)
    return dispatches


def next_wakeup(*, session: Session) -> str | None:
    """The earliest end of a retry backoff, so the dispatcher wakes up for it."""
    return session.execute(
        text(
            "SELECT min(not_before) FROM tasks"
            " WHERE status = 'available' AND pending_deps = 0 AND not_before IS NOT NULL"
        )
    ).scalar()


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Applied:
    report: Report
    target: TaskStatus | None
    """None: the report was ignored (stale, duplicate, late or for an unknown task)."""
    reason: str


def apply_reports(
    *, session: Session, reports: Sequence[Report], max_output: int = 1024 * 1024
) -> list[Applied]:
    """Apply worker reports with the fencing rule, in order, in the caller's transaction.

    A report changes a task only if it carries the task's current attempt and the
    task is in flight; anything else is recorded as ignored and changes nothing.
    """
    conn = session.connection()
    ids = sorted({r.task_id for r in reports})
    state: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ids):
        for row in conn.execute(
            select(
                TASKS.c.id, TASKS.c.status, TASKS.c.attempts, TASKS.c.failures, TASKS.c.max_attempts
            ).where(TASKS.c.id.in_(chunk))
        ):
            state[row.id] = dict(row._mapping)
    at = now()
    results: list[Applied] = []
    events: list[dict[str, Any]] = []
    done: list[str] = []
    released: list[str] = []
    for report in reports:
        current = state.get(report.task_id)
        if current is None:
            results.append(Applied(report, None, "unknown task"))
            continue
        status = TaskStatus(current["status"])
        decision = decide_report(
            status=status,
            task_attempt=current["attempts"],
            report_attempt=report.attempt,
            kind=report.kind,
            failures=current["failures"],
            max_attempts=current["max_attempts"],
        )
        if decision.target is None:
            events.append(
                _event(
                    report.task_id,
                    status.value,
                    status.value,
                    report.attempt,
                    at,
                    f"ignored: {decision.reason}",
                    report.worker,
                )
            )
            results.append(Applied(report, None, decision.reason))
            continue
        values: dict[str, Any] = {"status": decision.target.value, "updated_at": at}
        detail = decision.reason
        if report.kind is ReportKind.STARTED:
            values.update(worker=report.worker, started_at=report.at or at)
        elif report.kind is ReportKind.SUCCEEDED:
            values.update(
                output=truncate(report.output, max_output) if report.output else report.output,
                error=None,
                completed_at=report.at or at,
                note=None,
            )
        else:
            error = truncate(report.error or "Error: unknown failure", max_output)
            values.update(error=error, failures=current["failures"] + 1)
            if report.worker:
                values["worker"] = report.worker
            if decision.target is TaskStatus.AVAILABLE:
                delay = decision.retry_in or 0.0
                due = datetime.now(timezone.utc) + timedelta(seconds=delay)
                values.update(
                    not_before=stamp(due),
                    note=f"attempt {report.attempt} failed ({error.splitlines()[0][:200]});"
                    f" retry {current['failures'] + 2} of {current['max_attempts']}"
                    f" not before {stamp(due)[:19]} UTC",
                )
            else:
                values.update(completed_at=report.at or at, note=None)
            detail = f"{decision.reason}: {error}"
            if report.traceback:
                detail += "\n" + truncate(report.traceback, max_output)
        changed = conn.execute(
            update(TASKS)
            .where(
                TASKS.c.id == report.task_id,
                TASKS.c.status == status.value,
                TASKS.c.attempts == report.attempt,
            )
            .values(**values)
        ).rowcount
        if changed != 1:
            raise StoreError(f"task {report.task_id!r} changed under the dispatcher")
        events.append(
            _event(
                report.task_id,
                status.value,
                decision.target.value,
                report.attempt,
                at,
                detail,
                report.worker,
            )
        )
        current["status"] = decision.target.value
        if "failures" in values:
            current["failures"] = values["failures"]
        if decision.target is TaskStatus.WORKING and report.worker:
            conn.execute(
                update(SLOTS)
                .where(SLOTS.c.task_id == report.task_id)
                .values(worker_id=report.worker, updated_at=at)
            )
        if decision.target not in IN_FLIGHT:
            released.append(report.task_id)
        if decision.target is TaskStatus.DONE:
            done.append(report.task_id)
        results.append(Applied(report, decision.target, decision.reason))
    _release_slots(session, released, at)
    if done:
        conn.execute(
            text(
                "UPDATE tasks SET pending_deps = pending_deps - 1"
                " WHERE id IN (SELECT task_id FROM task_edges WHERE depends_on = :dep)"
            ),
            [{"dep": task_id} for task_id in done],
        )
    _record(session, events)
    return results


def task_ids_in(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


# --------------------------------------------------------------------------- leases


def acquire_lease(*, session: Session, name: str, holder: str, ttl: float, clock: float) -> bool:
    """Take or renew a named lease; True if ``holder`` has it until ``clock + ttl``."""
    conn = session.connection()
    changed = conn.execute(
        update(LEASES)
        .where(LEASES.c.name == name)
        .where((LEASES.c.holder == holder) | (LEASES.c.expires_at < clock))
        .values(holder=holder, expires_at=clock + ttl)
    ).rowcount
    if changed:
        return True
    exists = conn.execute(select(LEASES.c.holder).where(LEASES.c.name == name)).first()
    if exists is not None:
        return False
    conn.execute(insert(LEASES).values(name=name, holder=holder, expires_at=clock + ttl))
    return True


def holds_lease(*, session: Session, name: str, holder: str, clock: float) -> bool:
    """Whether ``holder`` has the lease until at least ``clock``."""
    row = (
        session.connection()
        .execute(
            select(LEASES.c.holder).where(
                LEASES.c.name == name, LEASES.c.holder == holder, LEASES.c.expires_at > clock
            )
        )
        .first()
    )
    return row is not None


def release_lease(*, session: Session, name: str, holder: str) -> None:
    session.connection().execute(
        delete(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder)
    )


def lease_holder(*, session: Session, name: str) -> tuple[str, float] | None:
    row = (
        session.connection()
        .execute(select(LEASES.c.holder, LEASES.c.expires_at).where(LEASES.c.name == name))
        .first()
    )
    return None if row is None else (row.holder, row.expires_at)


# --------------------------------------------------------------------------- rendering


def task_dict(task: Task) -> dict[str, Any]:
    """A task as ``--json`` prints it: the seed's field names, dependencies as a list."""
    return {
        "id": task.id,
        "description": task.description,
        "status": task.status,
        "worker": task.worker,
        "dependencies": json.loads(task.dependencies or "[]"),
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
    }


def _maybe_json(text_value: str) -> Any:
    try:
        return json.loads(text_value)
    except json.JSONDecodeError:
        return text_value


def dependency_states(*, session: Session, task_id: str) -> list[tuple[str, str]]:
    """Each dependency of a task with its status, for ``bridge show``."""
    rows = session.connection().execute(
        select(EDGES.c.depends_on, TASKS.c.status)
        .join(TASKS, TASKS.c.id == EDGES.c.depends_on)
        .where(EDGES.c.task_id == task_id)
        .order_by(TASKS.c.seq)
    )
    return [(row.depends_on, row.status) for row in rows]
