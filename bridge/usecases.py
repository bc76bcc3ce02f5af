"""What a user can ask of bridge, whichever surface they ask through.

The CLI (and the HTTP API and MCP server to come) parse a request, call one
function here and render what it returns. Each function takes an ``App`` and
plain values and returns a result dataclass; nothing here prints, and every
"it worked, but..." travels back as a line in ``warnings``. The store stays the
only SQL and the broker the only Redis: this module only puts their calls in order.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from bridge import store
from bridge.app import App
from bridge.broker import (
    Broker,
    BrokerError,
    CancelOutcome,
    Withdrawal,
    WorkerInfo,
)
from bridge.graph import TaskSpec
from bridge.models import Task, TaskEvent, WorkerSlot
from bridge.settings import Settings, redact_url
from bridge.states import FINISHED_BADLY, IN_FLIGHT, TaskStatus

DISPATCHER_LEASE = "dispatcher"
"""Every dispatcher lease's name starts with this (one per database today; ``status``
shows any, so a lease named per queue by an older dispatcher shows too)."""


def _redis_unreachable(app: App, exc: BrokerError) -> str:
    """The broker's one line, naming the Redis (password hidden) if it does not already."""
    where = redact_url(app.settings.redis_url)
    return str(exc) if where in str(exc) else f"Redis at {where}: {exc}"


# ------------------------------------------------------------------------------ add


@dataclass
class Added:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Already there with the same definition (only with ``skip_same``)."""
    warnings: list[str] = field(default_factory=list)


def add(app: App, specs: Sequence[TaskSpec], *, skip_same: bool = False) -> Added:
    """Add tasks in one transaction (all or nothing) and wake the dispatcher.

    Warns about kinds no handler module loaded here registers: the tasks are still
    added (workers elsewhere may know them), but a typo should not wait for 3 a.m.
    """
    warnings = _unknown_kinds(app.settings, specs)
    with store.writing(app.engine) as session:
        result = store.add_tasks(
            session=session,
            specs=specs,
            skip_same=skip_same,
            max_payload=app.settings.max_output,
            queue=app.settings.queue,
        )
    if result.added:
        app.nudge()
    return Added(added=result.added, skipped=result.skipped, warnings=warnings)


def _unknown_kinds(settings: Settings, specs: Sequence[TaskSpec]) -> list[str]:
    from bridge.workers.registry import HandlerError, is_registered, load_modules

    warnings = []
    try:
        load_modules(settings.handlers)
    except HandlerError as exc:
        warnings.append(str(exc))
    unknown = sorted({s.kind for s in specs if not is_registered(s.kind)})
    if unknown:
        warnings.append(
            f"no handler registered here for kind(s) {', '.join(unknown)};"
            " workers must load it (BRIDGE_HANDLERS) or these tasks will fail"
        )
    return warnings


# ------------------------------------------------------------------------------ admin


@dataclass
class Retried:
    task_id: str
    warnings: list[str] = field(default_factory=list)


def retry(app: App, task_id: str) -> Retried:
    """A failed or cancelled task back to ``available``; its history is kept."""
    with store.writing(app.engine) as session:
        store.retry_task(session=session, task_id=task_id)
    app.nudge()
    return Retried(task_id)


@dataclass
class CancelResult:
    task_id: str
    previous: TaskStatus
    job: str | None = None
    """What became of its RQ job, when it had one (removed, being stopped, running on)."""
    stopped: bool = True
    """False when its job may go on running (a simple worker, or Redis unreachable);
    its result is then ignored."""
    warnings: list[str] = field(default_factory=list)


def cancel(app: App, task_id: str) -> CancelResult:
    """Cancel in the database (which decides), then withdraw or stop the RQ job."""
    with store.writing(app.engine) as session:
        cancelled = store.cancel_task(session=session, task_id=task_id)
    app.nudge()  # its slot is free: let the dispatcher fill it now
    result = CancelResult(task_id, cancelled.previous)
    if cancelled.job_id is not None:
        try:
            outcome = _cancel_job(app.broker(), cancelled)
            result.job, result.stopped = outcome.message, outcome.stopped
        except BrokerError as exc:
            result.stopped = False
            result.warnings.append(
                f"{_redis_unreachable(app, exc)}; any result its job sends will be ignored"
            )
    return result


def _cancel_job(broker: Broker, cancelled: store.Cancelled) -> CancelOutcome:
    """The one place cancel talks to Redis (the broker decides from RQ's job status)."""
    assert cancelled.job_id is not None
    return broker.cancel(cancelled.job_id, cancelled.queue)


@dataclass
class Cleaned:
    deleted: int
    warnings: list[str] = field(default_factory=list)


def clean(app: App) -> Cleaned:
    """Delete every task and its history, free the slots, and fence off what was in flight."""
    with store.writing(app.engine) as session:
        cleaned = store.clean(session=session)
    result = Cleaned(cleaned.count)
    if cleaned.in_flight:
        try:
            _fence_out(app.broker(), cleaned.in_flight)
        except BrokerError as exc:
            result.warnings.append(
                f"{_redis_unreachable(app, exc)}; {len(cleaned.in_flight)} job(s) in flight"
                " were not fenced off: they may still run, and their reports are ignored"
            )
    return result


def _fence_out(broker: Broker, in_flight: Sequence[tuple[str, str]]) -> None:
    """The one place clean talks to Redis: every attempt in flight is fenced off (none
    starts, a running one is stopped); tokens are never reused, so none can match later."""
    broker.supersede([Withdrawal(job, queue) for job, queue in in_flight], force=True)


# ------------------------------------------------------------------------------ reading


def list_tasks(app: App, status: TaskStatus | None = None) -> list[Task]:
    with store.reading(app.engine) as session:
        return store.list_tasks(session=session, status=status)


@dataclass
class TaskView:
    """One task with what ``show`` adds: its dependencies, why it is where it is, and
    the traceback of its latest failure."""

    task: Task
    dependencies: list[tuple[str, str]]
    why: str
    traceback: str | None

    def to_dict(self) -> dict[str, Any]:
        data = store.task_dict(self.task)
        data["why"] = self.why
        return data


def show_task(app: App, task_id: str) -> TaskView:
    with store.reading(app.engine) as session:
        task = store.require_task(session=session, task_id=task_id)
        deps = store.dependency_states(session=session, task_id=task_id)
        events = store.list_events(session=session, task_id=task_id)
    return TaskView(task, deps, explain(task, deps), latest_failure(events))


def latest_failure(events: Sequence[TaskEvent]) -> str | None:
    """The detail of the task's latest failed attempt: error line, then the traceback."""
    in_flight = {s.value for s in IN_FLIGHT}
    for event in reversed(events):
        if event.detail and "Traceback (most recent call last)" in event.detail:
            return event.detail
        if event.detail and event.from_status in in_flight and event.to_status != "done":
            if event.to_status in ("failed", "available"):
                return event.detail
    return None


def list_events(
    app: App, task_id: str | None = None, *, after: int | None = None
) -> list[TaskEvent]:
    """The audit trail in order; ``after`` an event id gives only newer ones (``--follow``)."""
    with store.reading(app.engine) as session:
        if task_id is not None:
            store.require_task(session=session, task_id=task_id)
        return store.list_events(session=session, task_id=task_id, after=after)


def list_slots(app: App) -> list[WorkerSlot]:
    with store.reading(app.engine) as session:
        return store.list_slots(session=session)


def explain(task: Task, dependencies: Sequence[tuple[str, str]]) -> str:
    """One sentence on why the task is in its state (``bridge show``)."""
    if task.status == "available":
        bad = [dep for dep, status in dependencies if status in ("failed", "cancelled")]
        waiting = [dep for dep, status in dependencies if status != "done"]
        if bad:
            return f"blocked: dependency {', '.join(bad)} failed or was cancelled (bridge retry it)"
        if waiting:
            return f"waiting for {len(waiting)} dependency(ies): {', '.join(waiting[:5])}"
        if task.not_before:
            return task.note or f"retry backoff until {task.not_before[:19]} UTC"
        return "ready: waiting for a free slot and a running dispatcher"
    if task.status == "queued":
        return task.note or "enqueued: waiting for a worker to pick it up"
    if task.status == "working":
        return f"running on {task.worker or 'a worker'}"
    return task.note or {
        "done": "finished",
        "failed": "failed with no attempts left",
        "cancelled": "cancelled",
    }.get(task.status, "")


# ------------------------------------------------------------------------------ progress


@dataclass(frozen=True)
class Problem:
    task_id: str
    status: str
    error: str | None
    """First line of the error, if any."""


@dataclass
class GraphProgress:
    """Where the whole graph stands: what ``bridge wait`` watches."""

    counts: dict[str, int]
    ready: int
    finished: bool
    stuck: bool
    """Nothing in flight, nothing ready, something failed or was cancelled."""
    problems: list[Problem] = field(default_factory=list)
    """When stuck: the failed and cancelled tasks that stop the graph."""
    blocked: int = 0
    """When stuck: how many tasks wait directly on ``problems``."""
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def progress(app: App) -> GraphProgress:
    with store.reading(app.engine) as session:
        state = store.progress(session=session)
        result = GraphProgress(
            counts=dict(state.counts), ready=state.ready, finished=state.finished, stuck=state.stuck
        )
        if state.stuck:
            bad = [t for s in FINISHED_BADLY for t in store.list_tasks(session=session, status=s)]
            result.problems = [
                Problem(t.id, t.status, t.error.splitlines()[0] if t.error else None) for t in bad
            ]
            result.blocked = store.dependents_blocked_by(
                session=session, task_ids=[t.id for t in bad]
            )
    return result


# ------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class DispatcherLease:
    name: str
    holder: str
    since: str | None
    """UTC time the holder took the lease (ISO 8601), if recorded."""
    expires_in: float
    """Seconds until it lapses; negative: it lapsed that long ago (the holder is gone)."""

    @property
    def live(self) -> bool:
        return self.expires_in > 0


@dataclass
class Status:
    """``bridge status``: is anything running this database, and how far along is it."""

    database: str
    redis: str
    queue: str
    dispatchers: list[DispatcherLease]
    counts: dict[str, int]
    in_flight: int
    slots: int
    """Slot rows in the database (the running dispatcher's ``--slots``)."""
    slots_busy: int
    queue_depth: int | None = None
    """Jobs waiting in the RQ queue; None when Redis cannot be reached."""
    workers: list[WorkerInfo] | None = None
    """RQ workers registered on the queue; None when Redis cannot be reached."""
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def dispatching(self) -> bool:
        return any(lease.live for lease in self.dispatchers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total"] = self.total
        data["dispatching"] = self.dispatching
        for lease, raw in zip(self.dispatchers, data["dispatchers"], strict=True):
            raw["live"] = lease.live
        return data


def status(app: App, *, clock: float | None = None) -> Status:
    """The database's view (leases, counts, slots), then Redis's (workers, queue depth).

    Redis being down is a warning, not an error: the database part still answers.
    """
    with store.reading(app.engine) as session:
        # The lease clock, not this host's: on PostgreSQL, leases are stamped by the database.
        clock = store.lease_clock(session=session) if clock is None else clock
        leases = store.list_leases(session=session, prefix=DISPATCHER_LEASE)
        counts = dict(store.progress(session=session).counts)
        slots = store.list_slots(session=session)
    result = Status(
        database=redact_url(app.settings.database_url),
        redis=redact_url(app.settings.redis_url),
        queue=app.settings.queue,
        dispatchers=[
            DispatcherLease(
                lease.name,
                lease.holder,
                None if lease.acquired_at is None else _iso(lease.acquired_at),
                round(lease.expires_at - clock, 1),
            )
            for lease in leases
        ],
        counts=counts,
        in_flight=sum(counts.get(s.value, 0) for s in IN_FLIGHT),
        slots=len(slots),
        slots_busy=sum(1 for s in slots if s.active),
    )
    try:
        broker = app.broker()
        result.queue_depth = broker.queued_jobs(app.settings.queue)
        result.workers = broker.workers(app.settings.queue)
    except BrokerError as exc:
        result.warnings.append(f"{_redis_unreachable(app, exc)}; workers and queue not shown")
    return result


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
