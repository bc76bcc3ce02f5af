"""What a user can ask of bridge, whichever surface they ask through.

The CLI (and the HTTP API and MCP server to come) parse a request, call one
function here and render what it returns. Each function takes an ``App`` and
plain values and returns a result dataclass; nothing here prints, and every
"it worked, but..." travels back as a line in ``warnings``. The store stays the
only SQL and the broker the only Redis: this module only puts their calls in order.
"""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bridge import graph, runs, store
from bridge.app import App
from bridge.broker import (
    Broker,
    BrokerError,
    CancelOutcome,
    Withdrawal,
    WorkerInfo,
)
from bridge.external import (
    EXTERNAL_KIND,
    ClaimError,
    StaleAttempt,
    claim_kinds,
    is_claim,
    stale_message,
)
from bridge.graph import TaskSpec
from bridge.messages import Report, output_json
from bridge.models import Task, TaskEvent, TaskLog, WorkerSlot
from bridge.settings import Settings, redact_url
from bridge.states import FINISHED_BADLY, IN_FLIGHT, ReportKind, TaskStatus
from bridge.store.adopt import (
    BLOCKED_PREFIX,
    TC_STATUSES,
    Adoption,
    Plan,
    plan_adoption,
    sqlite_file,
)
from bridge.store.adopt import adopt as adopt_file

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
    run: str | None = None
    """The run the added tasks belong to."""


def add(
    app: App, specs: Sequence[TaskSpec], *, skip_same: bool = False, run: str | None = None
) -> Added:
    """Add tasks in one transaction (all or nothing) and wake the dispatcher.

    With ``run``, the tasks form a new run of that name and their ids are scoped to it
    (``graph.scope``); without, they keep their ids and get a run of their own.
    Warns about kinds no handler module loaded here registers: the tasks are still
    added (workers elsewhere may know them), but a typo should not wait for 3 a.m.
    """
    external = set(app.settings.all_external_kinds)  # agents run those: no handler needed
    warnings = _unknown_kinds(app.settings, [s.kind for s in specs if s.kind not in external])
    name = run if run is not None else store.auto_run_name()
    if run is not None:
        runs.check_run_name(run)
        specs = graph.scope(specs, run)
    with store.writing(app.engine) as session:
        if run is not None and not (skip_same and store.run_exists(session=session, name=run)):
            # First, so that a taken name is the error rather than a clash of its task ids;
            # with ``skip_same`` (``bridge run FILE --run NAME`` again) the run resumes.
            store.create_run(session=session, name=run, scoped=True)
        result = store.add_tasks(
            session=session,
            specs=specs,
            skip_same=skip_same,
            max_payload=app.settings.max_output,
            queue=app.settings.queue,
            run=name,
        )
        if result.added and run is None:  # no empty automatic run when all was skipped
            store.create_run(session=session, name=name, scoped=False)
    if result.added:
        app.nudge()
    return Added(added=result.added, skipped=result.skipped, warnings=warnings, run=name)


def _unknown_kinds(settings: Settings, kinds: Sequence[str]) -> list[str]:
    from bridge.workers.registry import HandlerError, is_registered, load_modules

    warnings = []
    try:
        load_modules(settings.handlers)
    except HandlerError as exc:
        warnings.append(str(exc))
    unknown = sorted({kind for kind in kinds if not is_registered(kind)})
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
    if is_claim(cancelled.job_id):  # an agent's claim has no RQ job: its outcome is refused
        result.job = "the agent's claim is revoked; its completion will be refused"
    elif cancelled.job_id is not None:
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
    jobs = [(job, queue) for job, queue in cleaned.in_flight if not is_claim(job)]
    if jobs:
        try:
            _fence_out(app.broker(), jobs)
        except BrokerError as exc:
            result.warnings.append(
                f"{_redis_unreachable(app, exc)}; {len(jobs)} job(s) in flight"
                " were not fenced off: they may still run, and their reports are ignored"
            )
    return result


def _fence_out(broker: Broker, in_flight: Sequence[tuple[str, str]]) -> None:
    """The one place clean talks to Redis: every attempt in flight is fenced off (none
    starts, a running one is stopped); tokens are never reused, so none can match later."""
    broker.supersede([Withdrawal(job, queue) for job, queue in in_flight], force=True)


# ------------------------------------------------------------------------------ reading


def list_tasks(app: App, status: TaskStatus | None = None, *, run: str | None = None) -> list[Task]:
    """Tasks in the order they were added: all, or those of ``status`` and of ``run``."""
    with store.reading(app.engine) as session:
        if run is not None:
            store.require_run(session=session, name=run)
        return store.list_tasks(session=session, status=status, run=run)


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
        pool = None
        if task.pool is not None and task.status == "available":
            pool = store.pool_info(session=session, name=task.pool)
    external = task.kind in app.settings.all_external_kinds
    why = (None if external else _unserved_queue(app, task)) or explain(
        task, deps, pool=pool, external=external
    )
    return TaskView(task, deps, why, latest_failure(events))


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


def explain(
    task: Task,
    dependencies: Sequence[tuple[str, str]],
    *,
    pool: "store.PoolInfo | None" = None,
    external: bool | None = None,
) -> str:
    """One sentence on why the task is in its state (``bridge show``). ``pool`` is the
    task's pool as it stands (None: no pool of that name exists). ``external``: an
    agent claims it (``bridge claim``), no RQ worker runs it (default: its kind is
    ``external``; callers that know ``BRIDGE_EXTERNAL_KINDS`` say so)."""
    if external is None:
        external = task.kind == EXTERNAL_KIND
    if task.status == "available":
        bad = [dep for dep, status in dependencies if status in ("failed", "cancelled")]
        waiting = [dep for dep, status in dependencies if status != "done"]
        if task.pending_deps > len(waiting):  # held back beyond its edges: see _held_back
            return _held_back(task)
        if bad:
            return f"blocked: dependency {', '.join(bad)} failed or was cancelled (bridge retry it)"
        if waiting:
            return f"waiting for {len(waiting)} dependency(ies): {', '.join(waiting[:5])}"
        if task.not_before and task.attempts == 0:
            return f"delayed until {task.not_before[:19]} UTC"
        if task.not_before:
            return task.note or f"retry backoff until {task.not_before[:19]} UTC"
        if task.pool is not None and not external:
            waits_for_pool = _pool_wait(task.pool, pool)
            if waits_for_pool:
                return waits_for_pool
        if external:
            return "ready: waiting for an agent to claim it (bridge claim)"
        return "ready: waiting for a free slot and a running dispatcher"
    if task.status == "queued":
        return task.note or "enqueued: waiting for a worker to pick it up"
    if task.status == "working" and is_claim(task.job_id):
        lease = f"; lease until {task.claim_expires_at[:19]} UTC" if task.claim_expires_at else ""
        return f"claimed by {task.worker or 'an agent'}{lease}"
    if task.status == "working":
        return f"running on {task.worker or 'a worker'}"
    return task.note or {
        "done": "finished",
        "failed": "failed with no attempts left",
        "cancelled": "cancelled",
    }.get(task.status, "")


def _held_back(task: Task) -> str:
    """Why a task waits on more than its unfinished dependencies: adoption from the Task
    Coordinator holds back, for good, a task whose declared dependencies bridge cannot
    honour (unknown id, cycle, malformed JSON), and says why in its note."""
    if task.note and task.note.startswith(BLOCKED_PREFIX):
        return task.note
    return (
        "blocked since adoption from the Task Coordinator: its declared dependencies"
        f" cannot be resolved (bridge events {task.id} says why)"
    )


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
    unserved_queues: dict[str, int] = field(default_factory=dict)
    """Queues that tasks wait on (queued or ready) and no live worker serves, with how
    many tasks wait there (empty when Redis cannot be reached)."""

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
        backlog = store.queue_backlog(session=session)
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
        result.workers = broker.workers(known_queues(app, broker, backlog))
        result.unserved_queues = unserved_queues(broker, backlog)
    except BrokerError as exc:
        result.warnings.append(f"{_redis_unreachable(app, exc)}; workers and queue not shown")
    result.warnings += [
        f"queue {queue!r}: {n} task(s) wait and no live worker serves that queue"
        f" (start one: bridge worker --queue {queue})"
        for queue, n in result.unserved_queues.items()
    ]
    return result


def known_queues(app: App, broker: Broker, backlog: Iterable[str] = ()) -> list[str]:
    """The queues this database uses: its default one, those tasks wait on, and those its
    dispatcher serves now; the workers shown are the ones on any of them."""
    return sorted({app.settings.queue, *backlog, *broker.served_queues()})


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ============================================================ db: schema migrations
# (``bridge db upgrade``, ``bridge db current``, ``bridge db history``). These never go
# through ``App.engine``, whose open refuses an older database when auto-migration is
# off: they are how such a database is looked at and upgraded.


@dataclass
class SchemaUpgrade:
    """What ``bridge db upgrade`` did (or, with ``sql``, would do)."""

    before: str
    """The schema before: a revision, ``unversioned`` or ``empty``."""
    after: str
    sql: str | None = None
    """With ``--sql``: the statements, not run (empty when already at head)."""

    @property
    def changed(self) -> bool:
        return self.before != self.after


def db_upgrade(app: App, *, sql: bool = False) -> SchemaUpgrade:
    """Bring the database to this bridge's revision, under the schema lock, or (``sql``)
    return the SQL that would, for the database's dialect, without changing it."""
    from bridge.store import migrate
    from bridge.store.schema import HEAD, refuse

    url = app.settings.database_url
    if sql:
        looked = migrate.look(url)
        refuse(looked.state, migrate.where_of(url))
        return SchemaUpgrade(looked.state.shown, HEAD, migrate.upgrade_sql(looked))
    engine = store.open_engine(url, create=True, migrate=False)
    try:
        before, after = migrate.upgrade(engine, where=migrate.where_of(url))
    finally:
        engine.dispose()
    return SchemaUpgrade(before.shown, after.shown)


@dataclass
class SchemaCurrent:
    revision: str
    """A revision, ``unversioned`` or ``empty``."""
    head: str
    kind: str
    """``head``, ``older``, ``unversioned``, ``empty`` or ``newer``."""

    @property
    def is_head(self) -> bool:
        return self.kind == "head"


def db_current(app: App) -> SchemaCurrent:
    """The database's schema revision and whether it is this bridge's (read only)."""
    from bridge.store import migrate
    from bridge.store.schema import HEAD, refuse

    url = app.settings.database_url
    looked = migrate.look(url, missing_ok=False)
    if looked.state.kind != "newer":
        refuse(looked.state, migrate.where_of(url))
    return SchemaCurrent(looked.state.shown, HEAD, looked.state.kind)


@dataclass
class SchemaHistory:
    revisions: list[Any]
    """``bridge.store.migrate.Revision``, newest first."""
    current: str | None
    """The database's revision, when it can be read."""


def db_history(app: App) -> SchemaHistory:
    """Every revision this bridge ships, and which one the database is at (if readable)."""
    from bridge.store import migrate
    from bridge.store.schema import refuse

    url = app.settings.database_url
    current: str | None = None
    try:
        looked = migrate.look(url, missing_ok=False)
    except store.StoreError:  # no database (yet), or unreadable: the history still stands
        pass
    else:
        if looked.state.kind in ("task-coordinator", "foreign"):
            refuse(looked.state, migrate.where_of(url))
        current = looked.state.shown
    return SchemaHistory(migrate.history(), current)


# ------------------------------------------------------------------------------ db backup


@dataclass
class BackedUp:
    path: str
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def backup(app: App, path: str) -> BackedUp:
    """Write a consistent backup of the database to ``path`` while everything keeps running."""
    from bridge.store.backup import backup as write_backup

    return BackedUp(path=path, counts=write_backup(app.engine, path))


@dataclass
class Restored:
    path: str
    counts: dict[str, int]
    schema: str
    created_at: str
    warnings: list[str] = field(default_factory=list)


def restore(app: App, path: str, *, replace: bool = False, merge: bool = False) -> Restored:
    """Load a backup (or a prune archive) into the database, all or nothing.

    The file is checked whole before the database is opened, so a bad file leaves the
    target untouched (not even created). Without ``replace`` or ``merge`` the target must
    hold no task. With ``merge`` a running dispatcher is woken for what came back.
    """
    from bridge.store.archive import read_header
    from bridge.store.backup import Mode
    from bridge.store.backup import restore as load_backup

    header = read_header(path)
    mode = Mode.MERGE if merge else Mode.REPLACE if replace else Mode.RESTORE
    counts = load_backup(app.engine, path, mode=mode)
    if merge:
        app.nudge()
    return Restored(path=path, counts=counts, schema=header.schema, created_at=header.created_at)


# ------------------------------------------------------------------------------ db prune


PRUNE_SAMPLE = 10
"""Task ids a prune names in its summary (the oldest first)."""


@dataclass
class Pruned:
    """What ``bridge db prune`` did (or, with ``dry_run``, would do)."""

    older_than: str
    cutoff: str
    """UTC time: graphs whose newest completion is before this may go."""
    planned: int
    """Tasks found prunable when planning."""
    components: int
    """Their graphs (weakly connected components)."""
    sample: list[str]
    """The first few planned ids, oldest first."""
    dry_run: bool
    deleted: int = 0
    kept: list[str] = field(default_factory=list)
    """Planned tasks kept because their graph changed meanwhile (a retry, a new dependent)."""
    batches: int = 0
    archive: str | None = None
    archived: dict[str, int] | None = None
    """Rows written per table, when an archive was written."""
    warnings: list[str] = field(default_factory=list)


def prune(
    app: App,
    older_than: str,
    *,
    archive: str | None = None,
    dry_run: bool = False,
    clock: datetime | None = None,
) -> Pruned:
    """Delete finished graphs whose newest completion is older than ``older_than``.

    Plans in one read transaction; with ``archive``, writes every planned task's rows
    (tasks, edges among them, events) to that file, fsynced, in the same transaction,
    before anything is deleted: if writing fails, nothing is. Then deletes in batches of
    at most ``PRUNE_CHUNK`` tasks, each its own transaction that re-checks the rule, so
    a graph reopened meanwhile (``bridge retry``) is kept whole (or, for a graph split
    over batches, what is left of it). Such kept tasks are in the archive too: the
    archive holds what was planned, ``kept`` says what of it is still in the database.
    """
    from bridge.settings import parse_duration
    from bridge.store import prune as pruning

    seconds = parse_duration(older_than)
    moment = clock or datetime.now(timezone.utc)
    cutoff = store.stamp(moment - timedelta(seconds=seconds))
    with store.reading(app.engine) as session:
        plan = pruning.plan_prune(session=session, cutoff=cutoff)
        ids = plan.task_ids
        result = Pruned(
            older_than=older_than,
            cutoff=cutoff,
            planned=len(ids),
            components=len(plan.components),
            sample=ids[:PRUNE_SAMPLE],
            dry_run=dry_run,
        )
        if dry_run or not ids:
            return result
        if archive is not None:
            from bridge.store import archive as archiving

            result.archive = archive
            result.archived = archiving.dump(session, archive, task_ids=ids)
    skip: set[int] = set()
    for batch in plan.batches:
        with store.writing(app.engine) as session:
            done = pruning.prune_batch(session=session, batch=batch, cutoff=cutoff, skip=skip)
        result.batches += 1
        result.deleted += len(done.deleted)
        skip |= done.kept
    if skip:  # of a graph split over batches, the part before the change is gone
        planned = [t for n in sorted(skip) for t in plan.components[n]]
        there = _still_there(app, planned)
        result.kept = [t for t in planned if t in there]
    return result


def _still_there(app: App, task_ids: Sequence[str]) -> set[str]:
    with store.reading(app.engine) as session:
        return {
            task_id
            for task_id in task_ids
            if store.get_task(session=session, task_id=task_id) is not None
        }


# ------------------------------------------------------------------------------ adopt

SUMMARY_LIMIT = 20
"""Tasks named per list in the adoption summary; the rest are counted."""


def _adoption_file(app: App) -> str:
    return sqlite_file(app.settings.database_url)


def adoption_plan(app: App) -> Plan:
    """What ``adopt`` would do to the configured file, read without changing it (the
    CLI shows it before asking for confirmation)."""
    return plan_adoption(_adoption_file(app))


@dataclass
class Adopted:
    """A Task Coordinator file made a bridge database, and what became of its tasks."""

    adoption: Adoption
    warnings: list[str] = field(default_factory=list)

    def summary(self, limit: int = SUMMARY_LIMIT) -> list[str]:
        """Lines for a person: counts, where the copy is, re-opened and blocked tasks."""
        done = self.adoption
        counts = ", ".join(f"{done.counts[s]} {s}" for s in TC_STATUSES if done.counts.get(s))
        lines = [
            f"adopted {done.total} task(s) as kind {done.kind!r}"
            + (f": {counts}" if counts else ""),
            f"{done.edges} dependency edge(s), {done.slots} worker slot(s) reset",
            f"the file as it was is kept at {done.copy}",
        ]
        if done.reopened:
            lines.append(
                f"re-opened {len(done.reopened)} task(s) a Task Coordinator worker held;"
                " they run again (at-least-once):"
            )
            lines += _capped(
                [
                    f"{_one_line(t.task_id)} ({t.status} on"
                    f" {_one_line(t.worker or 'no recorded worker')})"
                    for t in done.reopened
                ],
                limit,
            )
        if done.blocked:
            lines.append(
                f"blocked {len(done.blocked)} task(s) whose dependencies bridge cannot honour"
                " (bridge show ID says why):"
            )
            lines += _capped(
                [f"{_one_line(t.task_id)} ({t.status}): {t.reason}" for t in done.blocked], limit
            )
        if done.irregular_done:
            lines.append(
                f"{len(done.irregular_done)} done task(s) declare such dependencies;"
                " kept as stored:"
            )
            lines += _capped(
                [f"{_one_line(t.task_id)}: {t.reason}" for t in done.irregular_done], limit
            )
        return lines


def _one_line(task_id: str) -> str:
    """An id as written, or quoted with escapes when it would break the line."""
    return task_id if task_id.isprintable() else repr(task_id)


def _capped(items: list[str], limit: int) -> list[str]:
    lines = [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  and {len(items) - limit} more")
    return lines


def adopt(app: App, kind: str) -> Adopted:
    """Adopt the configured Task Coordinator file (a copy is kept beside it), then open
    it the usual way, which brings the adopted 0.1.0 schema up to the current one.

    The file must not have been opened by ``app`` before: opening is what would add
    bridge's tables to a Task Coordinator file.
    """
    path = _adoption_file(app)
    result = Adopted(adopt_file(path, kind))
    try:
        app.engine  # noqa: B018 (opening completes the schema)
    except store.StoreError as exc:
        result.warnings.append(
            f"{exc}; the tasks are adopted, and the next bridge command completes the schema"
        )
    result.warnings += _unknown_kinds(app.settings, [kind])
    return result


# ------------------------------------------------------------------------------ external tasks
# Agents as workers: a task of an external kind is never sent to RQ; a program claims it,
# keeps its lease alive and reports its outcome, fenced by attempt like an RQ report.
# Claims take no slot (see ``bridge.external``).

MAX_WORKER_NAME = 200
"""Characters of a claiming worker's name kept (it is shown, logged and stored)."""


@dataclass(frozen=True)
class Claimed:
    task: dict[str, Any]
    """``store.task_dict`` of the claimed task (now ``working``, at ``attempt``)."""
    attempt: int
    lease_expires_at: str
    """UTC text; heartbeat before then or the claim is failed as lost."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def claim(app: App, *, worker: str, kinds: Sequence[str] | None = None) -> Claimed | None:
    """Claim the highest-priority ready task of ``kinds`` (default: every external kind)
    for ``worker``; None when there is none. A kind that is not external is refused."""
    name = worker.strip() if isinstance(worker, str) else ""
    if not name or len(name) > MAX_WORKER_NAME or not name.isprintable():
        raise ClaimError(
            f"a claim needs a worker name: 1 to {MAX_WORKER_NAME} printable characters"
        )
    wanted = claim_kinds(kinds, app.settings.all_external_kinds)
    with store.writing(app.engine) as session:
        got = store.claim_external(
            session=session, kinds=wanted, worker=name, ttl=app.settings.claim_ttl
        )
        if got is None:
            return None
        task = store.task_dict(store.require_task(session=session, task_id=got.task_id))
    return Claimed(task, got.attempt, got.lease_expires_at)


def heartbeat(app: App, task_id: str, attempt: int) -> str:
    """Extend the claim of ``attempt`` by ``BRIDGE_CLAIM_TTL``; returns the new expiry.
    ``StaleAttempt`` when that attempt's claim is not live (lapsed, finished, cancelled)."""
    with store.writing(app.engine) as session:
        expires = store.renew_claim(
            session=session, task_id=task_id, attempt=attempt, ttl=app.settings.claim_ttl
        )
        if expires is not None:
            return expires
        refused = _stale(app, store.require_task(session=session, task_id=task_id), attempt)
    raise StaleAttempt(refused)


def complete(app: App, task_id: str, attempt: int, output: Any) -> dict[str, Any]:
    """Finish the claimed ``attempt`` as done with ``output`` (a JSON value); returns the
    task. A stale or duplicate completion changes nothing and raises ``StaleAttempt``."""
    try:
        text = output_json(output, app.settings.max_output)
    except (TypeError, ValueError) as exc:
        raise ClaimError(f"output must be a JSON value: {exc}") from None
    except RecursionError:
        raise ClaimError("output is nested too deeply") from None
    return _finish(app, task_id, attempt, ReportKind.SUCCEEDED, output=text)


def fail(app: App, task_id: str, attempt: int, error: str) -> dict[str, Any]:
    """Fail the claimed ``attempt`` with ``error``: retried after its backoff if attempts
    remain, else failed. A stale or duplicate failure raises ``StaleAttempt``."""
    if not isinstance(error, str) or not error.strip():
        raise ClaimError("a failure needs an error message")
    # Text columns cannot hold NUL on PostgreSQL; whatever an agent sends is kept readable.
    return _finish(app, task_id, attempt, ReportKind.FAILED, error=error.replace("\x00", "\ufffd"))


def _finish(
    app: App,
    task_id: str,
    attempt: int,
    kind: ReportKind,
    *,
    output: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """An agent's outcome as a worker report on the task's current claim, through the same
    fenced apply as RQ's (a refused one is recorded as ignored, as RQ's are)."""
    refused: str | None = None
    with store.writing(app.engine) as session:
        task = store.require_task(session=session, task_id=task_id)
        if not is_claim(task.job_id):
            refused = _stale(app, task, attempt)
        else:
            report = Report(
                task_id, attempt, kind, task.job_id or "", task.worker, output=output, error=error
            )
            [applied] = store.apply_reports(
                session=session, reports=[report], max_output=app.settings.max_output
            )
            if applied.target is None:
                refused = _stale(app, task, attempt)
            session.expire_all()
            result = store.task_dict(store.require_task(session=session, task_id=task_id))
    if refused is not None:
        raise StaleAttempt(refused)
    app.nudge()  # dependents may be ready, or a retry's backoff to wait for
    return result


def _stale(app: App, task: Task, attempt: int) -> str:
    external = is_claim(task.job_id) or task.kind in app.settings.all_external_kinds
    return stale_message(
        task.id, attempt, task_attempt=task.attempts, status=task.status, external=external
    )


# ---- runs: listing, waiting for, retrying, cancelling and deleting a run; deleting and
# waiting for chosen tasks (issue 9, sections 4 and 6). The Python API (bridge.client)
# goes through these too.


@dataclass
class RunView:
    """One run as ``bridge runs`` shows it: its tasks counted by status, and its state
    (``bridge.runs``: running, done, failed, cancelled or empty)."""

    name: str
    created_at: str
    state: str
    counts: dict[str, int]
    ready: int = 0
    scoped: bool = False
    schedule: str | None = None
    due_at: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        return self.state in runs.FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "counts": dict(self.counts),
            "total": self.total,
            "created_at": self.created_at,
            "scoped": self.scoped,
            "schedule": self.schedule,
            "due_at": self.due_at,
        }


def _run_view(row: store.RunCounts) -> RunView:
    return RunView(
        name=row.name,
        created_at=row.created_at,
        state=runs.run_state(row.counts, row.ready),
        counts=dict(row.counts),
        ready=row.ready,
        scoped=row.scoped,
        schedule=row.schedule,
        due_at=row.due_at,
    )


def list_runs(app: App) -> list[RunView]:
    """Every run, oldest first, with its counts and state."""
    with store.reading(app.engine) as session:
        return [_run_view(row) for row in store.list_runs(session=session)]


def get_run(app: App, name: str) -> RunView:
    """One run; ``TaskStateError`` (``no run 'X'``) when there is none."""
    with store.reading(app.engine) as session:
        return _run_view(store.require_run(session=session, name=name))


def run_task_ids(app: App, name: str) -> list[str]:
    """The stored ids of a run's tasks, in the order they were added."""
    with store.reading(app.engine) as session:
        store.require_run(session=session, name=name)
        return store.run_task_ids(session=session, name=name)


@dataclass
class RunRetried:
    run: str
    retried: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def retry_run(app: App, name: str, *, failed_only: bool = False) -> RunRetried:
    """Every failed task of the run (and, unless ``failed_only``, every cancelled one)
    back to ``available``, in one transaction; the run resumes."""
    wanted = [TaskStatus.FAILED.value] + ([] if failed_only else [TaskStatus.CANCELLED.value])
    with store.writing(app.engine) as session:
        store.require_run(session=session, name=name)
        ids = store.run_tasks_of_status(session=session, name=name, statuses=wanted)
        for task_id in ids:
            store.retry_task(session=session, task_id=task_id)
    if ids:
        app.nudge()
    return RunRetried(name, ids)


@dataclass
class RunCancelled:
    run: str
    cancelled: list[CancelResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


UNFINISHED = tuple(s.value for s in (TaskStatus.AVAILABLE, *IN_FLIGHT))


def cancel_run(app: App, name: str) -> RunCancelled:
    """Cancel every unfinished task of the run in one transaction (the database decides),
    then withdraw or stop the jobs of those that were in flight."""
    with store.writing(app.engine) as session:
        store.require_run(session=session, name=name)
        ids = store.run_tasks_of_status(session=session, name=name, statuses=UNFINISHED)
        cancelled = [store.cancel_task(session=session, task_id=t) for t in ids]
    result = RunCancelled(name)
    if cancelled:
        app.nudge()
    unreachable: BrokerError | None = None
    for one in cancelled:
        view = CancelResult(one.task_id, one.previous)
        if one.job_id is not None:
            try:
                if unreachable is not None:
                    raise unreachable
                outcome = _cancel_job(app.broker(), one)
                view.job, view.stopped = outcome.message, outcome.stopped
            except BrokerError as exc:
                unreachable, view.stopped = exc, False
        result.cancelled.append(view)
    if unreachable is not None:
        running = sum(1 for c in result.cancelled if not c.stopped)
        result.warnings.append(
            f"{_redis_unreachable(app, unreachable)}; {running} job(s) in flight may go on"
            " running, and any result they send will be ignored"
        )
    return result


@dataclass
class Deleted:
    deleted: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    """Runs deleted (named, or left without a task)."""
    cancelled: list[str] = field(default_factory=list)
    """With ``force``: tasks cancelled first."""
    warnings: list[str] = field(default_factory=list)


def delete_tasks(app: App, task_ids: Sequence[str]) -> Deleted:
    """Delete tasks that are finished or not yet started and that nothing unfinished
    depends on, with their events, logs and edges: all of them, or (error) none."""
    if not task_ids:
        raise graph.GraphError("give at least one task id")
    with store.writing(app.engine) as session:
        done = store.delete_tasks(session=session, task_ids=task_ids)
    return Deleted(deleted=done.deleted, runs=done.runs)


def delete_run(app: App, name: str, *, force: bool = False) -> Deleted:
    """Delete a finished run (nothing of it in flight or able to run) with its tasks and
    their history; ``force`` cancels what is unfinished first."""
    result = Deleted()
    if force:
        cancelled = cancel_run(app, name)
        result.cancelled = [c.task_id for c in cancelled.cancelled]
        result.warnings += cancelled.warnings
    with store.writing(app.engine) as session:
        view = _run_view(store.require_run(session=session, name=name))
        if not view.finished:
            raise store.TaskStateError(
                f"run {name!r} is {view.state} (" + _counts_line(view.counts) + "): only a"
                " finished run can be deleted; cancel it first, or add --force"
            )
        ids = store.run_task_ids(session=session, name=name)
        done = store.delete_tasks(session=session, task_ids=ids, run=name)
    result.deleted, result.runs = done.deleted, done.runs
    return result


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.value}" for s in TaskStatus if (n := counts.get(s.value, 0)))


@dataclass
class Waited:
    """How ``wait`` ended: ``code`` 0 all done, 1 nothing more can run, 3 timed out."""

    code: int
    task_ids: list[str] | None
    """The tasks judged; None: every task of the database."""
    problems: list[str] = field(default_factory=list)
    """When stuck: lines naming the failed or cancelled tasks that stop them."""
    warnings: list[str] = field(default_factory=list)


def wait(
    app: App,
    *,
    task_ids: Sequence[str] | None = None,
    run: str | None = None,
    timeout: float | None = None,
    show_progress: bool = False,
) -> Waited:
    """Block until the tasks (every task, ``task_ids``, or the run's) are all done, or
    nothing more of them can run, or ``timeout`` seconds passed."""
    from bridge import runner

    if task_ids and run is not None:
        raise graph.GraphError("give task ids or a run, not both")
    targets: list[str] | None = None
    with store.reading(app.engine) as session:
        if run is not None:
            store.require_run(session=session, name=run)
            targets = store.run_task_ids(session=session, name=run)
        elif task_ids:
            targets = list(dict.fromkeys(task_ids))
            for task_id in targets:
                store.require_task(session=session, task_id=task_id)
    code = runner.wait_for_graph(
        app.engine, task_ids=targets, timeout=timeout, show_progress=show_progress
    )
    result = Waited(code, targets)
    if code == runner.EXIT_STUCK:
        if targets is None:
            from bridge.render import stuck_lines

            result.problems = stuck_lines(progress(app))
        else:
            result.problems = runner.report_stuck(app.engine, targets)
    return result


# ---- logs: what a handler logged through ctx.log


@dataclass
class TaskLogs:
    task_id: str
    lines: list[TaskLog]


def task_logs(app: App, task_id: str, *, attempt: int | None = None) -> TaskLogs:
    """A task's ``ctx.log`` lines, of one attempt or all; an unknown id is an error."""
    with store.reading(app.engine) as session:
        store.require_task(session=session, task_id=task_id)
        return TaskLogs(task_id, store.list_logs(session=session, task_id=task_id, attempt=attempt))


# ---- route: queues, pools and delays
# A task names its queue (which workers may run it) and its pool (how many like it may
# run at once). Pools live in the database; which workers serve a queue only Redis knows.


def unserved_queues(broker: Broker, backlog: dict[str, int]) -> dict[str, int]:
    """Of the queues with tasks waiting (``backlog``), those no live worker serves."""
    waiting = {queue: n for queue, n in backlog.items() if n}
    if not waiting:
        return {}
    live = broker.live_workers(waiting)
    return {queue: n for queue, n in sorted(waiting.items()) if not live.get(queue)}


def _unserved_queue(app: App, task: Task) -> str | None:
    """Why a queued task is not picked up, when the reason is that no worker listens on
    its queue; None otherwise, or when Redis cannot be asked (``show`` still answers)."""
    if task.status != "queued":
        return None
    try:
        live = app.broker().live_workers([task.queue])
    except BrokerError:
        return None
    if live.get(task.queue):
        return None
    return f"queued on {task.queue!r}: no live worker serves that queue"


def _pool_wait(name: str, pool: "store.PoolInfo | None") -> str | None:
    """Why a ready task of pool ``name`` waits on its pool, if it does."""
    if pool is None:
        return f"pool {name!r} does not exist: bridge pool set {name} N"
    if pool.in_flight >= pool.slots:
        return f"waiting for a slot of pool {name!r} ({pool.in_flight} of {pool.slots} in flight)"
    return None


MAX_POOL_SLOTS = 1_000_000
"""More slots than any pool could use: a typo, not a bound."""


def _pool_name(name: str) -> str:
    if not graph.QUEUE_NAME.fullmatch(name):
        raise graph.GraphError(f"pool name {name!r} must be 1 to 100 letters, digits or _.:-")
    return name


@dataclass
class PoolSet:
    name: str
    slots: int
    created: bool
    warnings: list[str] = field(default_factory=list)


def pool_set(app: App, name: str, slots: int) -> PoolSet:
    """Create a pool or change its slots; 0 holds its tasks back. A lowered bound lets
    the tasks already in flight finish; the dispatcher is woken to use a raised one."""
    _pool_name(name)
    if isinstance(slots, bool) or not 0 <= slots <= MAX_POOL_SLOTS:
        raise graph.GraphError(f"pool slots must be a whole number from 0 to {MAX_POOL_SLOTS}")
    with store.writing(app.engine) as session:
        created = store.set_pool(session=session, name=name, slots=slots)
    app.nudge()
    return PoolSet(name, slots, created)


@dataclass
class PoolDeleted:
    name: str
    waiting: int
    """Ready tasks of the pool, which now wait until a pool of that name is set again."""
    warnings: list[str] = field(default_factory=list)


def pool_delete(app: App, name: str) -> PoolDeleted:
    """Delete a pool; refused while tasks of it are in flight. Its tasks not yet
    dispatched stay, and wait (as for any pool that does not exist) until it is set again."""
    with store.writing(app.engine) as session:
        waiting = store.delete_pool(session=session, name=name)
    result = PoolDeleted(name, waiting)
    if waiting:
        result.warnings.append(
            f"{waiting} task(s) of pool {name!r} now wait until it is set again"
            f" (bridge pool set {name} N)"
        )
    return result


@dataclass
class PoolList:
    pools: list[store.PoolInfo]
    warnings: list[str] = field(default_factory=list)

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(pool) for pool in self.pools]


def pool_list(app: App) -> PoolList:
    """Every pool with its slots, its tasks in flight and its ready tasks waiting; a
    warning for each pool that ready tasks name but that does not exist."""
    with store.reading(app.engine) as session:
        result = PoolList(store.list_pools(session=session))
        missing = store.missing_pools(session=session)
    result.warnings += [
        f"pool {name!r} does not exist and {n} ready task(s) wait for it: bridge pool set {name} N"
        for name, n in missing.items()
    ]
    return result


# ------------------------------------------------------------------------------ schedules
# (``bridge schedule add|list|remove``). The dispatcher creates the runs (at each due
# time, exactly once): ``Dispatcher._run_schedules``, ``store.fire_schedule``.

_UTC = timezone.utc
"""(``schedule_add`` takes a ``timezone`` argument, which hides the module.)"""


@dataclass
class ScheduleView:
    """A schedule as ``schedule list`` shows it; times are UTC store text."""

    name: str
    cron: str
    timezone: str
    catch_up: bool
    next_due: str | None
    last_due: str | None
    created_at: str
    tasks: int

    def next_due_local(self) -> str | None:
        """The next due time in the schedule's zone, ISO 8601 with its offset."""
        return _local_iso(self.next_due, self.timezone)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "catch_up": self.catch_up,
            "next_due": _utc_iso(self.next_due),
            "next_due_local": self.next_due_local(),
            "last_due": _utc_iso(self.last_due),
            "last_due_local": _local_iso(self.last_due, self.timezone),
            "created_at": _utc_iso(self.created_at),
            "tasks": self.tasks,
        }


def _utc_iso(moment: str | None) -> str | None:
    return None if moment is None else f"{moment[:10]}T{moment[11:19]}Z"


def _local_iso(moment: str | None, zone: str) -> str | None:
    from bridge import schedules

    if moment is None:
        return None
    return schedules.parse_stamp(moment).astimezone(schedules.parse_zone(zone)).isoformat()


def _schedule_view(row: Any) -> ScheduleView:
    import json

    return ScheduleView(
        name=row.name,
        cron=row.cron,
        timezone=row.timezone,
        catch_up=bool(row.catch_up),
        next_due=row.next_due,
        last_due=row.last_due,
        created_at=row.created_at,
        tasks=len(json.loads(row.graph)),
    )


@dataclass
class ScheduleAdded:
    schedule: ScheduleView
    warnings: list[str] = field(default_factory=list)


def schedule_add(
    app: App,
    name: str,
    cron: str,
    tasks: str | Sequence[TaskSpec],
    *,
    timezone: str = "UTC",
    catch_up: bool = False,
    source: str = "file",
    clock: datetime | None = None,
) -> ScheduleAdded:
    """Keep a graph (a graph file's text, or specs) to submit as a new run at each due time.

    The name, the cron expression, the zone and the graph are all checked now; the first
    due time is the first one after now. Tasks without a queue get this app's queue.
    """
    import json

    from bridge import schedules

    schedules.check_name(name)
    cron = schedules.parse_cron(cron)
    schedules.parse_zone(timezone)
    if isinstance(tasks, str):
        specs = graph.parse_graph(tasks, source)
        raw = json.loads(tasks)
    else:
        specs = list(tasks)
        raw = [schedules.spec_mapping(spec) for spec in specs]
    if not specs:
        raise schedules.ScheduleError(f"{source} has no tasks: nothing to schedule")
    inside = graph.unique_ids(specs)
    outside = sorted({d for spec in specs for d in spec.dependencies if d not in inside})
    warnings = _unknown_kinds(app.settings, [s.kind for s in specs])
    first = schedules.next_due(cron, timezone, clock or datetime.now(_UTC))
    with store.writing(app.engine) as session:
        existing = [d for d in outside if store.get_task(session=session, task_id=d) is not None]
        graph.check_new_graph(specs, existing=existing, max_payload=app.settings.max_output)
        store.add_schedule(
            session=session,
            name=name,
            cron=cron,
            timezone=timezone,
            graph_json=schedules.graph_json(raw, queue=app.settings.queue),
            catch_up=catch_up,
            next_due=schedules.stamp(first),
        )
        view = _schedule_view(store.get_schedule(session=session, name=name))
    app.nudge()
    return ScheduleAdded(view, warnings)


def schedule_list(app: App) -> list[ScheduleView]:
    with store.reading(app.engine) as session:
        return [_schedule_view(row) for row in store.list_schedules(session=session)]


@dataclass
class ScheduleRemoved:
    name: str
    warnings: list[str] = field(default_factory=list)


def schedule_remove(app: App, name: str) -> ScheduleRemoved:
    """Stop a schedule; the runs it created stay (``bridge runs`` lists them)."""
    with store.writing(app.engine) as session:
        store.remove_schedule(session=session, name=name)
    return ScheduleRemoved(name)


# ---- web: what the HTTP API (``bridge serve``) and ``bridge graph`` ask
# Paging with a keyset cursor, a task with its neighbours, a summary, the graph, health.

PAGE_LIMIT = 100
"""Tasks (or events) per page when the caller does not say."""
PAGE_MAX = 1000
"""The most a caller may ask for in one page."""
GRAPH_MAX = 5000
"""Tasks drawn in one graph; a larger one is cut (and says so)."""


def _page_size(limit: int | None) -> int:
    if limit is None:
        return PAGE_LIMIT
    if not 1 <= limit <= PAGE_MAX:
        raise graph.GraphError(f"limit must be between 1 and {PAGE_MAX}, got {limit}")
    return limit


def _cursor(cursor: str | None) -> int | None:
    """A cursor is the last row's position as given back by the previous page."""
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise graph.GraphError(f"bad cursor {cursor!r}: pass next_cursor as given")
    return int(cursor)


@dataclass
class TaskPage:
    tasks: list[dict[str, Any]]
    next_cursor: str | None
    """Pass it back as ``cursor`` for the next page; None when this page is the last."""


def page_tasks(
    app: App,
    *,
    status: str | None = None,
    q: str | None = None,
    run: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> TaskPage:
    """One page of tasks in insertion order (stable while tasks are added: the cursor
    is a position, and new tasks come after every existing one)."""
    size = _page_size(limit)
    if status is not None:
        try:
            TaskStatus(status)
        except ValueError:
            raise graph.GraphError(
                f"unknown status {status!r} (one of: {', '.join(s.value for s in TaskStatus)})"
            ) from None
    with store.reading(app.engine) as session:
        rows = store.page_tasks(
            session=session,
            limit=size + 1,
            status=status,
            q=q or None,
            run=run or None,
            after_seq=_cursor(cursor),
        )
    more = len(rows) > size
    rows = rows[:size]
    return TaskPage(
        tasks=[store.task_dict(t) for t in rows],
        next_cursor=str(rows[-1].seq) if more and rows else None,
    )


def task_detail(app: App, task_id: str) -> dict[str, Any]:
    """Every field of a task, its dependencies and dependents with their states, the why
    line and the latest failure's traceback (``GET /api/tasks/{id}``)."""
    with store.reading(app.engine) as session:
        task = store.require_task(session=session, task_id=task_id)
        deps = store.dependency_states(session=session, task_id=task_id)
        after = store.dependents(session=session, task_id=task_id)
        events = store.list_events(session=session, task_id=task_id)
    data = store.task_dict(task)
    data["why"] = explain(task, deps)
    data["dependency_states"] = [{"id": i, "status": s} for i, s in deps]
    data["dependents"] = [{"id": i, "status": s} for i, s in after]
    data["traceback"] = latest_failure(events)
    return data


def task_json(app: App, task_id: str) -> dict[str, Any]:
    with store.reading(app.engine) as session:
        return store.task_dict(store.require_task(session=session, task_id=task_id))


def specs_from_json(data: Any) -> list[TaskSpec]:
    """A request body: one task object or a list of them (a graph), checked as
    ``bridge add --file`` checks a file. An empty list is refused (as ``bridge run`` and
    ``bridge submit`` refuse an empty file): over HTTP or MCP it would only make an empty
    run."""
    if isinstance(data, dict):
        return [graph.spec_from_mapping(data, "task")]
    if isinstance(data, list):
        if not data:
            raise graph.GraphError("no tasks given")
        specs = []
        for index, raw in enumerate(data):
            if not isinstance(raw, dict):
                raise graph.GraphError(f"item {index} is not an object")
            label = f"item {index}" + (
                f" ({raw['id']!r})" if isinstance(raw.get("id"), str) else ""
            )
            specs.append(graph.spec_from_mapping(raw, label))
        return specs
    raise graph.GraphError("the body must be a task object or a list of task objects")


def page_events(
    app: App, *, task_id: str | None = None, after: int | None = None, limit: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of the audit trail in order, and the ``after`` of the next page (None: last)."""
    size = _page_size(limit)
    with store.reading(app.engine) as session:
        if task_id is not None:
            store.require_task(session=session, task_id=task_id)
        rows = store.page_events(session=session, limit=size + 1, task_id=task_id, after=after)
    more = len(rows) > size
    rows = rows[:size]
    events = [event_dict(e) for e in rows]
    return events, (rows[-1].id if more and rows else None)


def event_dict(event: Any) -> dict[str, Any]:
    return {
        key: getattr(event, key)
        for key in ("id", "task_id", "from_status", "to_status", "attempt", "worker", "at")
    } | {"detail": event.detail}


def slot_dicts(app: App) -> list[dict[str, Any]]:
    return [
        {
            "slot": s.slot,
            "worker_id": s.worker_id,
            "active": bool(s.active),
            "task_id": s.task_id,
            "updated_at": s.updated_at,
        }
        for s in list_slots(app)
    ]


def worker_dicts(app: App) -> list[dict[str, Any]]:
    """The RQ workers on the queue, with the task each runs (from its job id)."""
    broker = app.broker()
    with store.reading(app.engine) as session:
        backlog = store.queue_backlog(session=session)
    workers = broker.workers(known_queues(app, broker, backlog))
    jobs = [w.current_job for w in workers if w.current_job]
    with store.reading(app.engine) as session:
        owners = store.tasks_of_jobs(session=session, job_ids=jobs) if jobs else {}
    return [
        {
            "name": w.name,
            "state": w.state,
            "current_task": owners.get(w.current_job) if w.current_job else None,
            "last_heartbeat": w.last_heartbeat,
            "queues": w.queues,
        }
        for w in workers
    ]


@dataclass
class Summary:
    counts: dict[str, int]
    total: int
    in_flight: int
    slots: int
    slots_busy: int
    queue_depth: int | None
    dispatcher: dict[str, Any] | None
    runs: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["warnings"]
        return data


class LiveCounts:
    """Tasks by status for a long-running server: counted once, then carried forward by
    the events after that count (``bridge.tally``), so a summary at 100,000 tasks costs
    what one at 1,000 does. Deletions leave no event (``clean``, ``db prune``, ``db
    restore``): a full recount every ``RECOUNT_EVERY`` seconds, or at once when the event
    ids go back, corrects for them."""

    RECOUNT_EVERY = 60.0
    BATCH = 5000

    def __init__(self) -> None:
        import threading

        self.counts: dict[str, int] | None = None
        self.after = 0
        self.counted_at = 0.0
        self.lock = threading.Lock()

    def current(self, app: App) -> dict[str, int]:
        import time

        from bridge.tally import apply_events

        with self.lock:
            stale = time.monotonic() - self.counted_at > self.RECOUNT_EVERY
            if self.counts is None or stale:
                self._recount(app)
            assert self.counts is not None
            while True:
                with store.reading(app.engine) as session:
                    events = store.events_after(session=session, after=self.after, limit=self.BATCH)
                    if not events and store.last_event_id(session=session) < self.after:
                        self._recount(app)  # events deleted (clean): count again
                        break
                apply_events(self.counts, events)
                if events:
                    self.after = events[-1]["id"]
                if len(events) < self.BATCH:
                    break
            return dict(self.counts)

    def _recount(self, app: App) -> None:
        import time

        with store.reading(app.engine) as session:
            self.counts, self.after = store.counts_at(session=session)
        self.counted_at = time.monotonic()


def summary(app: App, *, live: LiveCounts | None = None) -> Summary:
    """Counts by status, in flight, slots, queue depth and the dispatcher lease.

    With ``live`` (a server's), the counts are carried forward from the events instead
    of counted afresh (a full scan of the tasks)."""
    counts = live.current(app) if live is not None else None
    with store.reading(app.engine) as session:
        clock = store.lease_clock(session=session)
        leases = store.list_leases(session=session, prefix=DISPATCHER_LEASE)
        if counts is None:
            counts = dict(store.progress(session=session).counts)
        slots = store.list_slots(session=session)
        runs = store.run_count(session=session)
    result = Summary(
        counts=counts,
        total=sum(counts.values()),
        in_flight=sum(counts.get(s.value, 0) for s in IN_FLIGHT),
        slots=len(slots),
        slots_busy=sum(1 for s in slots if s.active),
        queue_depth=None,
        dispatcher=_dispatcher(leases, clock),
        runs=runs,
    )
    try:
        result.queue_depth = app.broker().queued_jobs(app.settings.queue)
    except BrokerError as exc:
        result.warnings.append(f"{_redis_unreachable(app, exc)}; queue depth not shown")
    return result


def _dispatcher(leases: Sequence[Any], clock: float) -> dict[str, Any] | None:
    """The live lease if any, else the latest one (not live); None if none ever."""
    if not leases:
        return None
    best = max(leases, key=lambda lease: lease.expires_at)
    return {
        "holder": best.holder,
        "since": None if best.acquired_at is None else _iso(best.acquired_at),
        "live": best.expires_at > clock,
    }


@dataclass
class Health:
    database: str
    redis: str
    dispatcher: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.database == "ok" and self.redis == "ok"


def health(app: App) -> Health:
    """Whether the database and Redis answer now, and the dispatcher's lease."""
    database, dispatcher = "ok", None
    try:
        with store.reading(app.engine) as session:
            store.ping(session=session)
            clock = store.lease_clock(session=session)
            dispatcher = _dispatcher(
                store.list_leases(session=session, prefix=DISPATCHER_LEASE), clock
            )
    except Exception as exc:  # noqa: BLE001 (any failure is "not healthy", said in a line)
        database = _one_line_error(app, exc)
    redis = "ok"
    try:
        app.broker().ping()
    except Exception as exc:  # noqa: BLE001
        redis = _one_line_error(app, exc)
    return Health(database, redis, dispatcher)


def _one_line_error(app: App, exc: Exception) -> str:
    from bridge.settings import redact_text

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return redact_text(text, app.settings.database_url, app.settings.redis_url)[:300]


@dataclass
class TaskGraph:
    nodes: list[dict[str, Any]]
    edges: list[tuple[str, str]]
    """``(dependency, task)``."""
    cut: bool = False
    """More than ``GRAPH_MAX`` tasks: only the first are drawn."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "edges": [{"from": a, "to": b} for a, b in self.edges],
            "truncated": self.cut,
        }


def task_graph(app: App, root: str | None = None) -> TaskGraph:
    """The graph ``root`` belongs to (every task linked to it by dependencies, either
    way), or every task when no root; at most ``GRAPH_MAX`` tasks."""
    with store.reading(app.engine) as session:
        if root is not None:
            store.require_task(session=session, task_id=root)
        nodes, edges, cut = store.graph_of(session=session, root=root, limit=GRAPH_MAX)
    return TaskGraph(nodes, edges, cut)


# ---- mcp: what the MCP server's ``wait_for_tasks`` returns (``bridge.mcp_server``)

WAIT_OUTCOMES = {0: "done", 1: "stuck", 3: "timeout"}
"""``Waited.code`` as a word an agent reads."""


@dataclass
class WaitedStates:
    """How a wait ended, with the state of each task waited for (or, when it waited for
    every task, the counts by state), and what stops a stuck graph."""

    outcome: str
    states: dict[str, str] | None
    counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


WAITED_STATES_MAX = 1000
"""Tasks whose states a wait for every task lists; beyond, only the counts."""


def waited_states(app: App, waited: Waited) -> WaitedStates:
    """The states after ``wait``: each of ``waited.task_ids`` (a task deleted meanwhile
    shows as ``deleted``), or, having waited for every task, the counts (and each
    task's state while there are at most ``WAITED_STATES_MAX``)."""
    with store.reading(app.engine) as session:
        if waited.task_ids is None:
            counts = dict(store.progress(session=session).counts)
            states = None
            if sum(counts.values()) <= WAITED_STATES_MAX:
                states = {t.id: t.status for t in store.list_tasks(session=session)}
        else:
            states = {}
            for task_id in waited.task_ids:
                task = store.get_task(session=session, task_id=task_id)
                states[task_id] = "deleted" if task is None else task.status
            counts = {}
            for state in states.values():
                counts[state] = counts.get(state, 0) + 1
    return WaitedStates(
        outcome=WAIT_OUTCOMES.get(waited.code, str(waited.code)),
        states=states,
        counts=counts,
        problems=list(waited.problems),
        warnings=list(waited.warnings),
    )
