"""Schedules: a graph submitted as a new run at each cron due time.

An occurrence is created in one transaction: a guarded advance of the schedule
(``next_due`` must still be the due time it was planned from), then per due time a run
(its name is the primary key) and the run's tasks. Two dispatchers that both believe
they hold the lease, or one restarted half way, therefore never create a run twice:
whoever commits second finds the schedule already advanced and changes nothing.
"""

from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bridge import graph
from bridge.graph import GraphError
from bridge.models import Schedule
from bridge.schedules import Firing, ScheduleError, run_name, stamp
from bridge.store.engine import now
from bridge.store.runs import create_run
from bridge.store.tables import SCHEDULES
from bridge.store.tasks import add_tasks


def add_schedule(
    *,
    session: Session,
    name: str,
    cron: str,
    timezone: str,
    graph_json: str,
    catch_up: bool,
    next_due: str,
) -> None:
    """Record a new schedule; a name already taken is a ``ScheduleError``."""
    try:
        with session.begin_nested():
            session.connection().execute(
                insert(SCHEDULES).values(
                    name=name,
                    cron=cron,
                    timezone=timezone,
                    graph=graph_json,
                    catch_up=int(catch_up),
                    created_at=now(),
                    last_due=None,
                    next_due=next_due,
                )
            )
    except IntegrityError:
        raise ScheduleError(f"schedule {name!r} already exists") from None


def list_schedules(*, session: Session) -> list[Schedule]:
    rows = session.connection().execute(select(SCHEDULES).order_by(SCHEDULES.c.name))
    return [Schedule(**row._mapping) for row in rows]


def get_schedule(*, session: Session, name: str) -> Schedule | None:
    return session.get(Schedule, name)


def remove_schedule(*, session: Session, name: str) -> None:
    """Delete a schedule (its runs stay); an unknown name is a ``ScheduleError``."""
    removed = session.connection().execute(delete(SCHEDULES).where(SCHEDULES.c.name == name))
    if removed.rowcount == 0:
        raise ScheduleError(f"no schedule named {name!r}")


def next_schedule_due(*, session: Session) -> str | None:
    """The earliest due time of any schedule: the dispatcher's one read to know when
    to look again (the table holds a row per schedule, not per occurrence)."""
    return session.connection().execute(select(func.min(SCHEDULES.c.next_due))).scalar()


def due_schedules(*, session: Session, at: str) -> list[Schedule]:
    """The schedules due at ``at`` (UTC store text), earliest first."""
    rows = session.connection().execute(
        select(SCHEDULES)
        .where(SCHEDULES.c.next_due <= at)
        .order_by(SCHEDULES.c.next_due, SCHEDULES.c.name)
    )
    return [Schedule(**row._mapping) for row in rows]


@dataclass
class Fired:
    """What one schedule's firing did."""

    created: list[str] = field(default_factory=list)
    """Runs created, oldest due time first."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(run, reason) for occurrences whose tasks could not be added (the graph refers to a
    task that is gone, say): the schedule moves on, the error is logged."""
    advanced: bool = True
    """False when another dispatcher (or an earlier life of this one) got there first."""


def fire_schedule(
    *,
    session: Session,
    schedule: Schedule,
    firing: Firing,
    queue: str,
    max_payload: int,
) -> Fired:
    """Create the runs of ``firing`` and advance the schedule, in the caller's transaction.

    The advance is guarded by the ``next_due`` the firing was planned from: if it changed
    (someone fired it, or it was removed and added again), nothing is done.
    """
    advanced = session.connection().execute(
        update(SCHEDULES)
        .where(SCHEDULES.c.name == schedule.name, SCHEDULES.c.next_due == schedule.next_due)
        .values(last_due=stamp(firing.due[-1]), next_due=stamp(firing.next_due))
    )
    if advanced.rowcount != 1:
        return Fired(advanced=False)
    fired = Fired()
    source = f"schedule {schedule.name!r}"
    for due in firing.due:
        name = run_name(schedule.name, due)
        try:
            specs = graph.scope(graph.parse_graph(schedule.graph, source), name)
            with session.begin_nested():
                create_run(
                    session=session,
                    name=name,
                    scoped=True,
                    schedule=schedule.name,
                    due_at=stamp(due),
                )
                add_tasks(
                    session=session, specs=specs, queue=queue, max_payload=max_payload, run=name
                )
        except GraphError as exc:
            fired.failed.append((name, str(exc)))
        else:
            fired.created.append(name)
    return fired
