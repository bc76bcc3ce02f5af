"""Runs: named submissions of tasks. Every task added since runs exist belongs to one.

A run either scopes its tasks' ids (``scoped``: the stored id is derived from the run
and the id as the graph wrote it, so one graph file can be submitted again and again)
or keeps them as given (tasks added without a run name get a run of their own, named
after the moment, so ``runs``, ``wait --run`` and the rest work for them too).
"""

import secrets
from datetime import datetime, timezone

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bridge.graph import DuplicateIdError
from bridge.models import Run
from bridge.store.engine import now

RUNS = Run.__table__


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
