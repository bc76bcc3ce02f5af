"""Runs: named submissions of tasks. Every task added since runs exist belongs to one.

A run either scopes its tasks' ids (``scoped``: the stored id is derived from the run
and the id as the graph wrote it, so one graph file can be submitted again and again)
or keeps them as given (tasks added without a run name get a run of their own, named
after the moment, so ``runs``, ``wait --run`` and the rest work for them too).
"""

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bridge.graph import DuplicateIdError
from bridge.models import Run
from bridge.states import TaskStatus
from bridge.store.engine import TaskStateError, now
from bridge.store.tables import RUNS, TASKS


def auto_run_name(prefix: str = "add") -> str:
    """A fresh name for a run nobody named: ``add-20261128T010203-1a2b``."""
    moment = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{moment}-{secrets.token_hex(2)}"


def create_run(
    *,
    session: Session,
    name: str,
    scoped: bool,
    schedule: str | None = None,
    due_at: str | None = None,
) -> None:
    """Record a new run; a name already taken is a ``GraphError`` (nothing is changed).

    The primary key decides, also between two processes racing to create the same
    run (a schedule's occurrence is created exactly once this way)."""
    try:
        with session.begin_nested():
            session.connection().execute(
                insert(RUNS).values(
                    name=name,
                    created_at=now(),
                    scoped=int(scoped),
                    schedule=schedule,
                    due_at=due_at,
                )
            )
    except IntegrityError:
        raise DuplicateIdError(f"run {name!r} already exists") from None


def get_run(*, session: Session, name: str) -> Run | None:
    return session.get(Run, name)


def run_exists(*, session: Session, name: str) -> bool:
    return (
        session.connection().execute(select(RUNS.c.name).where(RUNS.c.name == name)).first()
        is not None
    )


@dataclass(frozen=True)
class RunCounts:
    """A run's row with its tasks counted by status (``bridge runs``)."""

    name: str
    created_at: str
    scoped: bool
    schedule: str | None
    due_at: str | None
    counts: dict[str, int] = field(default_factory=dict)
    ready: int = 0
    """Available tasks whose dependencies are all done."""


def list_runs(*, session: Session, name: str | None = None) -> list[RunCounts]:
    """Every run (or the one named), oldest first, with its tasks counted by status.

    Two ``GROUP BY run`` queries over the tasks (``ix_tasks_run``), not one per run.
    """
    conn = session.connection()
    query = select(RUNS).order_by(RUNS.c.created_at, RUNS.c.name)
    counted = select(TASKS.c.run, TASKS.c.status, func.count()).group_by(
        TASKS.c.run, TASKS.c.status
    )
    ready = select(TASKS.c.run, func.count()).where(
        TASKS.c.status == TaskStatus.AVAILABLE.value, TASKS.c.pending_deps == 0
    )
    if name is not None:
        query = query.where(RUNS.c.name == name)
        counted = counted.where(TASKS.c.run == name)
        ready = ready.where(TASKS.c.run == name)
    counts: dict[str, dict[str, int]] = {}
    for run, status, n in conn.execute(counted):
        if run is not None:
            counts.setdefault(run, {})[status] = int(n)
    ready_by_run = {
        run: int(n) for run, n in conn.execute(ready.group_by(TASKS.c.run)) if run is not None
    }
    return [
        RunCounts(
            name=row.name,
            created_at=row.created_at,
            scoped=bool(row.scoped),
            schedule=row.schedule,
            due_at=row.due_at,
            counts=counts.get(row.name, {}),
            ready=ready_by_run.get(row.name, 0),
        )
        for row in conn.execute(query)
    ]


def require_run(*, session: Session, name: str) -> RunCounts:
    """The named run with its counts; ``TaskStateError`` when there is none."""
    found = list_runs(session=session, name=name)
    if not found:
        raise TaskStateError(f"no run {name!r}")
    return found[0]


def run_task_ids(*, session: Session, name: str) -> list[str]:
    """The stored ids of the run's tasks, in the order they were added."""
    query = select(TASKS.c.id).where(TASKS.c.run == name).order_by(TASKS.c.seq)
    return list(session.connection().execute(query).scalars())


def run_tasks_of_status(*, session: Session, name: str, statuses: Sequence[str]) -> list[str]:
    """The ids of the run's tasks in one of ``statuses``, in the order they were added."""
    query = (
        select(TASKS.c.id)
        .where(TASKS.c.run == name, TASKS.c.status.in_(list(statuses)))
        .order_by(TASKS.c.seq)
    )
    return list(session.connection().execute(query).scalars())
