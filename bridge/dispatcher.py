"""The dispatcher: the loop that joins the store (SQL) and the broker (Redis/RQ).

Each tick, in one transaction: apply the reports read from Redis, claim ready
tasks into free slots as ``queued``. Then, after the commit: acknowledge the
reports and enqueue the jobs. A crash between commit and enqueue leaves tasks
``queued`` with no job; reconciliation sends them again (a new attempt, with a
new fencing token, after the old one is fenced off in Redis).

One dispatcher per database serves every queue its tasks name; others stand by
on the database lease. Neither a Redis outage nor a database error stops it: it
logs, backs off and carries on until SIGTERM/SIGINT.
"""

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import FrameType

from bridge import schedules, store
from bridge.broker import Broker, BrokerError, BrokerUnavailable, Withdrawal
from bridge.defaults import (
    CHECK_EVERY,
    COALESCE_BATCH,
    COALESCE_IN_FLIGHT,
    COALESCE_WAIT,
    DATABASE_RETRY,
    DATABASE_RETRY_CAP,
    HEARTBEAT_RETURN,
    LEASE_MARGIN,
    LEASE_TTL,
    LOST_JOB_GRACE,
    MAX_BLOCK,
    PICKED_GRACE,
    QUEUE_TIMEOUT,
    REPORT_GRACE,
    START_WAIT,
    TIMEOUT_MARGIN,
)
from bridge.messages import Dispatch, Report
from bridge.recovery import Flight, JobState, Limits, Verdict, judge
from bridge.retention import Retention
from bridge.settings import Settings
from bridge.states import IN_FLIGHT, NOTE_KINDS, ReportKind, TaskStatus

log = logging.getLogger("bridge.dispatcher")

LEASE_NAME = "dispatcher"
"""One lease per database: one dispatcher serves all of its queues."""
_NO_CLAIM = NOTE_KINDS | {ReportKind.STARTED}
"""Reports that neither free a slot nor make a task ready: a tick of only these claims
nothing (a busy handler's progress must not cost a claim query each time)."""
CONSUMER = "dispatcher"
"""One consumer name for every dispatcher of a database (only the lease holder reads),
so a successor re-reads what a killed predecessor read but never acknowledged."""


@dataclass
class TickStats:
    applied: int = 0
    ignored: int = 0
    dispatched: int = 0
    recovered: int = 0
    finished: int = 0
    """Applied reports that took a task out of flight."""
    noted: int = 0
    """Progress and log reports (kept or dropped): they never move a task."""


@dataclass
class Dispatcher:
    settings: Settings
    engine: store.Engine
    broker: Broker
    name: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._run_id: str | None = None
        self._heartbeats_due = 0.0
        """Until this moment (monotonic) a missing heartbeat is not yet evidence: see
        ``HEARTBEAT_RETURN``."""
        self._next_check = 0.0
        self._lease_until = 0.0
        self._claim_wanted = True
        self._wakeup: datetime | None = None
        self._wakeup_stale = True
        self._picked_since: dict[str, float] = {}
        self._queues: set[str] = {self.settings.queue}
        self._in_flight = 0
        """About how many tasks are in flight (exact after start, kept up by each tick)."""
        self._last_read: tuple[int, int] = (0, 0)
        """The newest report stream id read since ``drain`` began (it stops past its mark)."""
        self._predecessors: set[str] = set()
        """Dispatchers of this database whose lease we took: their claim on the Redis
        namespace may outlive them a moment, and is ours to take over."""
        self._retention: Retention | None = None
        if self.settings.retention_seconds is not None:
            self._retention = Retention(
                self.engine, self.settings.retention_seconds, self.settings.retention_every
            )
        """Pruning of old finished graphs (``BRIDGE_RETENTION``), a batch between ticks."""
        self._schedule_due: datetime | None = None
        self._schedules_stale = True
        """The earliest due time of any schedule, looked up again when stale (once per
        ``CHECK_EVERY``, and after each firing), never once per tick."""
        self._broken_schedules: set[tuple[str, str]] = set()
        """Schedules (name, due time) that could not be planned, logged once."""

    # ------------------------------------------------------------------ lifecycle

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping after this tick", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, once: bool = False) -> TickStats:
        """Dispatch until stopped (or one pass with ``once``); returns the totals.

        Redis and database errors are logged and retried with backoff; only a stop
        request (or ``once``) ends the loop.
        """
        totals = TickStats()
        if not self._wait_for_lease(once=once):
            return totals
        try:
            self._claim_namespace()
            self.broker.claim_queues(self._queues)
            started = False
            failures = 0
            while not self.stop_event.is_set():
                try:
                    if not started:
                        self.start(totals)
                        started = True
                    self._add(totals, self.tick(block=not once))
                    if once:
                        break
                    self._maintain(totals)
                    if self._retention is not None and self._lease_valid():
                        self._retention.step()
                    failures = 0
                except (BrokerUnavailable, store.StoreError, ValueError, LookupError) as exc:
                    # Redis or the database failing, or something in Redis that no code of
                    # ours wrote (a record another program changed): log, back off, go on.
                    if once:
                        raise
                    failures += 1
                    pause = min(DATABASE_RETRY_CAP, DATABASE_RETRY * 2 ** min(failures - 1, 8))
                    if isinstance(exc, BrokerUnavailable):
                        log.warning("Redis failed (%s); trying again in %.0fs", exc, pause)
                    elif isinstance(exc, store.StoreError):
                        log.warning("the database failed (%s); trying again in %.0fs", exc, pause)
                    else:
                        log.exception("unexpected error; trying again in %.0fs", pause)
                    self.broker.reread_pending()
                    self._claim_wanted = True
                    self._wakeup_stale = True
                    self.stop_event.wait(pause)
        finally:
            self._release()
        return totals

    def start(self, totals: TickStats | None = None) -> None:
        """Apply what a crashed predecessor left unacknowledged, rebuild slots, reconcile."""
        totals = totals or TickStats()
        if not self._renew_lease():
            raise store.StoreError("another dispatcher holds the lease for this database")
        self.broker.ensure_group()
        self._run_id = self.broker.run_id()
        self._heartbeats_due = time.monotonic() + HEARTBEAT_RETURN
        risk = self.broker.eviction_risk()
        if risk is not None:
            log.warning("%s", risk)
        self._add(totals, self.drain())
        with store.writing(self.engine) as session:
            in_flight = store.reset_slots(session=session, slots=self.settings.slots)
        log.info("slots reset: %d task(s) in flight", len(in_flight))
        self._in_flight = len(in_flight)
        totals.recovered += self.reconcile(grace=0.0)

    # ------------------------------------------------------------------ the tick

    def drain(self) -> TickStats:
        """Apply every report waiting in Redis, without claiming: what is in flight is
        judged only after this, so no report on its way is mistaken for a lost job.

        "Waiting" means in the stream when the drain begins: it stops once it has read
        past the stream's newest entry of that moment. Reports that keep arriving while
        it applies (workers running the jobs already queued) are left to the next tick;
        draining until the stream is empty would hold the dispatcher here, claiming
        nothing, until the workers ran out of jobs, every time it reconciles.
        """
        totals = TickStats()
        mark = _stream_id(self.broker.last_report_id())
        self._last_read = (0, 0)
        while True:
            stats = self.tick(block=False, claim=False)
            self._add(totals, stats)
            if stats.applied + stats.ignored + stats.noted == 0 or self._last_read >= mark:
                return totals

    def tick(self, *, block: bool = True, claim: bool = True) -> TickStats:
        """Read reports (blocking), apply them and claim ready tasks in one commit, then
        acknowledge and enqueue. Claims only when something could have made a task
        ready or freed a slot, so an idle or "started"-only tick costs one read."""
        stats = TickStats()
        # A claim already owed (reports applied by a drain, which never claims) must not
        # wait for the next report: in a chain there is none until this claim is made.
        owed = self._claim_wanted and claim and self._lease_valid()
        timeout_ms = int(self._block_seconds() * 1000) if block and not owed else 0
        incoming = self.broker.read_reports(CONSUMER, block_ms=timeout_ms)
        if block and incoming and self._in_flight >= COALESCE_IN_FLIGHT:
            incoming += self._coalesce(len(incoming))
        elif block and incoming and all(_is_start(m.report) for m in incoming):
            self.stop_event.wait(START_WAIT)
            incoming += self.broker.read_reports(CONSUMER, block_ms=0, count=COALESCE_BATCH)
        if incoming:
            self._last_read = max(self._last_read, _stream_id(incoming[-1].message_id))
        reports = [m.report for m in incoming if m.report is not None]
        if len(reports) < len(incoming) or any(r.kind not in _NO_CLAIM for r in reports):
            self._claim_wanted = True  # a nudge (tasks added or retried) or a freed slot
        if len(reports) < len(incoming):
            self._wakeup_stale = True  # tasks added may be delayed: look up the next wake-up
        if self._wakeup is not None and self._wakeup <= datetime.now(timezone.utc):
            # A retry backoff ended: claim once for it. The next wake-up time is looked up
            # again only when something changes, so a backoff that ends while every slot
            # is busy does not turn into a claim on every tick.
            self._claim_wanted = True
            self._wakeup = None
        if claim:
            self._run_schedules()
        claiming = claim and self._claim_wanted and self._lease_valid()
        dispatches: list[Dispatch] = []
        if reports or claiming:
            with store.writing(self.engine) as session:
                if reports:
                    applied = store.apply_reports(
                        session=session, reports=reports, max_output=self.settings.max_output
                    )
                    stats.applied = sum(1 for a in applied if a.target is not None)
                    stats.noted = sum(1 for a in applied if a.report.kind in NOTE_KINDS)
                    stats.ignored = len(applied) - stats.applied - stats.noted
                    stats.finished = sum(
                        1 for a in applied if a.target is not None and a.target not in IN_FLIGHT
                    )
                    for a in applied:
                        if a.target is TaskStatus.AVAILABLE:
                            self._wakeup_stale = True  # a failed attempt will be retried
                        if a.target in (TaskStatus.FAILED, TaskStatus.AVAILABLE):
                            log.info(
                                "task %r attempt %d failed%s: %s",
                                a.report.task_id,
                                a.report.attempt,
                                ", will retry" if a.target is TaskStatus.AVAILABLE else "",
                                (a.report.error or "").splitlines()[0][:300],
                            )
                if claiming:
                    dispatches = store.claim_ready(
                        session=session,
                        slots=self.settings.slots,
                        max_output=self.settings.max_output,
                        max_inputs=self.settings.max_inputs,
                        exclude_kinds=self.settings.all_external_kinds,
                        namespace=self.broker.namespace,
                    )
                    self._claim_wanted = False
        self._claim_new_queues(dispatches)
        self.broker.settle([m.message_id for m in incoming], dispatches)
        stats.dispatched = len(dispatches)
        self._in_flight = max(0, self._in_flight + len(dispatches) - stats.finished)
        if stats.dispatched or reports:
            log.debug("tick: %s", stats)
        return stats

    def _coalesce(self, have: int) -> list:
        """With many tasks in flight the RQ queue holds a backlog, so a few milliseconds
        spent gathering more reports delay no worker, and one commit then serves many
        reports instead of one. With few in flight (a chain) nothing waits."""
        # A plain wait, then a look without waiting: a short BLOCK would be rounded up
        # to Redis's own tick (100 ms) and stall the whole pipeline. (The stop event,
        # not time.sleep: under libfaketime a short nanosleep fails with EINVAL.)
        self.stop_event.wait(COALESCE_WAIT)
        return self.broker.read_reports(CONSUMER, block_ms=0, count=COALESCE_BATCH - have)

    def _claim_new_queues(self, dispatches: list[Dispatch]) -> None:
        new = {d.queue for d in dispatches} - self._queues
        if new:
            self.broker.claim_queues(new)
            self._queues |= new

    def _block_seconds(self) -> float:
        wait = min(MAX_BLOCK, max(0.0, self._next_check - time.monotonic()))
        if self._wakeup_stale:
            with store.reading(self.engine) as session:
                due = store.next_wakeup(session=session)
            self._wakeup = None if due is None else _parse(due)
            self._wakeup_stale = False
        if self._wakeup is not None:
            until = (self._wakeup - datetime.now(timezone.utc)).total_seconds()
            wait = min(wait, max(0.0, until))
        wait = min(wait, self._schedule_wait())
        return max(wait, 0.01)

    # ------------------------------------------------------------------ schedules

    def _schedule_wait(self) -> float:
        """Seconds until the earliest schedule is due (one read of ``min(next_due)``
        when stale), so the blocking read of reports wakes up for it."""
        if self._schedules_stale:
            with store.reading(self.engine) as session:
                due = store.next_schedule_due(session=session)
            self._schedule_due = None if due is None else _parse(due)
            self._schedules_stale = False
        if self._schedule_due is None:
            return MAX_BLOCK
        return max(0.0, (self._schedule_due - datetime.now(timezone.utc)).total_seconds())

    def _run_schedules(self) -> None:
        """Create the runs of every schedule whose due time has come, while we hold the
        lease: each schedule in its own transaction (runs, their tasks and the schedule's
        guarded advance together), so each due time makes its run exactly once, whoever
        dispatches and however often it restarts."""
        self._schedule_wait()  # the earliest due time, read again if stale
        moment = datetime.now(timezone.utc)
        if self._schedule_due is None or self._schedule_due > moment:
            return
        if not self._lease_valid():
            return
        with store.reading(self.engine) as session:
            due = store.due_schedules(session=session, at=schedules.stamp(moment))
        for row in due:
            assert row.next_due is not None
            try:
                firing = schedules.plan(
                    row.cron,
                    row.timezone,
                    due=_parse(row.next_due),
                    now=moment,
                    catch_up=bool(row.catch_up),
                )
            except schedules.ScheduleError as exc:  # a row edited by hand, say
                if (row.name, row.next_due) not in self._broken_schedules:
                    self._broken_schedules.add((row.name, row.next_due))
                    log.error("schedule %r cannot be run: %s", row.name, exc)
                continue
            if firing is None or not self._lease_valid():
                continue
            with store.writing(self.engine) as session:
                fired = store.fire_schedule(
                    session=session,
                    schedule=row,
                    firing=firing,
                    queue=self.settings.queue,
                    max_payload=self.settings.max_output,
                )
            for name in fired.created:
                log.info("schedule %r: created run %r", row.name, name)
            for name, reason in fired.failed:
                log.error("schedule %r: run %r not created: %s", row.name, name, reason)
            if fired.advanced and firing.skipped:
                log.warning(
                    "schedule %r: passed over %d missed due time(s) (only the latest runs;"
                    " a schedule added with --catch-up runs each)",
                    row.name,
                    firing.skipped,
                )
            if fired.created:
                self._claim_wanted = True
        self._schedules_stale = True

    # ------------------------------------------------------------------ recovery

    def _maintain(self, totals: TickStats) -> None:
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + CHECK_EVERY
        self._claim_wanted = True  # catch what no nudge announced (cancel, add without Redis)
        self._wakeup_stale = True
        self._schedules_stale = True
        if not self._renew_lease():
            log.warning("lost the dispatcher lease; waiting to take it back")
            if not self._wait_for_lease(once=False):
                return
            self.start(totals)
            return
        try:
            self.broker.claim_queues(self._queues)
            self._claim_namespace()
        except BrokerError as exc:
            if isinstance(exc, BrokerUnavailable):
                raise
            log.error("%s", exc)
        totals.recovered += self.expire_claims()
        run_id = self.broker.run_id()
        if run_id != self._run_id:
            # What Redis lost shows as lost jobs (sent again); what it kept (a Redis with
            # persistence) or what a worker still runs (its heartbeat is back) goes on.
            log.warning("Redis restarted (run id changed): judging everything in flight now")
            self._run_id = run_id
            self._heartbeats_due = time.monotonic() + HEARTBEAT_RETURN
            self.broker.ensure_group()
            totals.recovered += self.reconcile(grace=0.0)
        else:
            totals.recovered += self.reconcile(grace=LOST_JOB_GRACE)

    def reconcile(self, *, grace: float) -> int:
        """Resolve every task in flight that Redis disagrees with (``recovery.judge``).

        Every pending report is applied first. Lost jobs are sent again as a new
        attempt; attempts whose worker died or hung are failed (and retried if
        attempts are left). Each replaced attempt is fenced off in Redis before
        anything else happens to it; one that a live worker turns out to be running
        is left alone (a hung one past its timeout is stopped). Reports that arrived
        while it judged are applied before any verdict is written. Returns how many
        tasks it acted on.
        """
        self.drain()
        with store.reading(self.engine) as session:
            flights = store.in_flight(session=session)
        self._in_flight = len(flights)
        if not flights:
            self._picked_since.clear()
            return 0
        jobs = self._observe(
            self.broker.job_states([(f.job_id, f.queue) for f in flights if f.job_id])
        )
        limits = Limits(
            grace=grace,
            queue_timeout=QUEUE_TIMEOUT,
            timeout_margin=TIMEOUT_MARGIN,
            picked_grace=PICKED_GRACE,
            report_grace=REPORT_GRACE,
            heartbeats_back_in=max(0.0, self._heartbeats_due - time.monotonic()),
        )
        moment = datetime.now(timezone.utc)
        resend: list[tuple[Flight, str]] = []
        failing: list[tuple[Flight, str]] = []
        stopping: set[str | None] = set()
        for flight in flights:
            job = jobs.get(flight.job_id or "", JobState(exists=False))
            verdict: Verdict | None
            if flight.job_id and f"-{self.broker.namespace}-t" not in flight.job_id:
                # Sent by a bridge before fencing tokens: today's workers refuse its job.
                verdict = Verdict(True, "re-dispatched: its job was sent by an older bridge")
            else:
                verdict = judge(flight, job, now=moment, limits=limits)
            if verdict is not None:
                (resend if verdict.redispatch else failing).append((flight, verdict.reason))
                if verdict.stop:
                    stopping.add(flight.job_id)
        if not (resend or failing) or not self._lease_valid():
            return 0
        running = self.broker.supersede(
            [Withdrawal(f.job_id, f.queue) for f, _ in resend if f.job_id]
        ) | self.broker.supersede(
            [Withdrawal(f.job_id, f.queue) for f, _ in failing if f.job_id not in stopping],
            withdraw=False,
        )
        self.broker.supersede(
            [Withdrawal(f.job_id, f.queue) for f, _ in failing if f.job_id in stopping],
            withdraw=False,
            force=True,
        )
        resend = [(f, r) for f, r in resend if f.job_id not in running]
        failing = [(f, r) for f, r in failing if f.job_id in stopping or f.job_id not in running]
        # A job that ended between the look and the fence has published its report
        # (workers report before they drop the heartbeat): apply it before any verdict.
        # Verdicts below re-check the job id and status, so a task it finished is left be.
        self.drain()
        groups: dict[str, list[Flight]] = {}
        for flight, reason in resend:
            groups.setdefault(reason, []).append(flight)
        failures = [
            Report(f.task_id, f.attempt, ReportKind.FAILED, f.job_id or "", f.worker, error=r)
            for f, r in failing
        ]
        dispatches: list[Dispatch] = []
        with store.writing(self.engine) as session:
            for reason, group in groups.items():
                dispatches += store.redispatch(
                    session=session,
                    tasks=group,
                    reason=reason,
                    max_output=self.settings.max_output,
                    max_inputs=self.settings.max_inputs,
                )
            if failures:
                store.apply_reports(
                    session=session, reports=failures, max_output=self.settings.max_output
                )
        self._claim_new_queues(dispatches)
        self.broker.enqueue(dispatches)
        for d in dispatches:
            log.warning("task %r sent again as attempt %d: %s", d.task_id, d.attempt, d.job_id)
        for r in failures:
            log.warning("task %r attempt %d failed: %s", r.task_id, r.attempt, r.error)
        if failures:
            self._wakeup_stale = True
        return len(dispatches) + len(failures)

    def expire_claims(self) -> int:
        """Fail external tasks whose claim lapsed (no heartbeat within ``BRIDGE_CLAIM_TTL``),
        as a dead worker's attempt is failed: retried if attempts remain."""
        with store.writing(self.engine) as session:
            expired = store.expire_claims(session=session, max_output=self.settings.max_output)
        for a in expired:
            log.warning(
                "task %r attempt %d failed: %s", a.report.task_id, a.report.attempt, a.report.error
            )
        if expired:
            self._wakeup_stale = True  # a retry's backoff to wake up for
        return len(expired)

    def _observe(self, jobs: dict[str, JobState]) -> dict[str, JobState]:
        """Add how long each job has been seen picked by a worker but not started."""
        moment = time.monotonic()
        picked = {job_id for job_id, job in jobs.items() if job.picked and job.status == "queued"}
        self._picked_since = {j: self._picked_since.get(j, moment) for j in picked}
        return {
            job_id: replace(job, picked_for=moment - self._picked_since[job_id])
            if job_id in picked
            else job
            for job_id, job in jobs.items()
        }

    # ------------------------------------------------------------------ the lease

    def _wait_for_lease(self, *, once: bool) -> bool:
        announced = False
        while not self.stop_event.is_set():
            try:
                if self._renew_lease():
                    if announced:
                        log.info("took over the dispatcher lease")
                    return True
            except store.StoreError as exc:
                log.warning("cannot check the dispatcher lease (%s); trying again", exc)
            if once:
                log.error("another dispatcher holds the lease; --once does nothing")
                return False
            if not announced:
                log.info("another dispatcher is active; standing by")
                announced = True
            self.stop_event.wait(1.0)
        return False

    def _lease_valid(self) -> bool:
        """Dispatch only while our lease has ``LEASE_MARGIN`` left: a successor can take
        it only after it expires, so the two never dispatch at the same time."""
        return time.monotonic() + LEASE_MARGIN < self._lease_until

    def _renew_lease(self) -> bool:
        """Take or renew the lease. The database decides by its lease clock (PostgreSQL's
        own, or this host's on SQLite); we count our term on the monotonic clock from
        *before* asking, so it ends no later than the database's expiry, whatever the
        host's wall clock says."""
        asked = time.monotonic()
        with store.writing(self.engine) as session:
            if self._lease_until == 0.0:  # taking it: remember whom from
                held = store.lease_holder(session=session, name=LEASE_NAME)
                if held is not None and held[0] != self.name:
                    self._predecessors.add(held[0])
            ok = store.acquire_lease(
                session=session, name=LEASE_NAME, holder=self.name, ttl=LEASE_TTL
            )
        self._lease_until = asked + LEASE_TTL if ok else 0.0
        return ok

    def _claim_namespace(self) -> None:
        """Refuse to serve a namespace another live dispatcher serves, unless it is one
        whose lease this dispatcher took (a predecessor of this very database): anyone
        else works for a different file with this database's identity (a copy)."""
        other = self.broker.claim_namespace(self.name, LEASE_TTL)
        if other is None:
            return
        if other in self._predecessors:
            self.broker.claim_namespace(self.name, LEASE_TTL, take_from=other)
            return
        raise BrokerError(_copy_message(self.broker.namespace, other))

    def _release(self) -> None:
        try:
            self.broker.release_namespace(self.name)
        except BrokerError as exc:
            log.warning("could not release the namespace: %s", exc)
        try:
            self.broker.release_queues(self._queues)
        except BrokerError as exc:
            log.warning("could not release the queues: %s", exc)
        try:
            with store.writing(self.engine) as session:
                store.release_lease(session=session, name=LEASE_NAME, holder=self.name)
        except store.StoreError as exc:
            log.warning("could not release the lease: %s", exc)

    @staticmethod
    def _add(totals: TickStats, stats: TickStats) -> None:
        totals.applied += stats.applied
        totals.ignored += stats.ignored
        totals.dispatched += stats.dispatched
        totals.recovered += stats.recovered


def _copy_message(namespace: str, other: str) -> str:
    return (
        f"dispatcher {other} already serves this database's Redis namespace {namespace}"
        " from another database file: this file is a copy of that database (same identity);"
        " a copy must not be dispatched on the same Redis as its original"
    )


def _is_start(report: Report | None) -> bool:
    return report is not None and report.kind is ReportKind.STARTED


def _stream_id(message_id: bytes | str | None) -> tuple[int, int]:
    """A Redis stream id (``<ms>-<seq>``) as a tuple that compares as Redis orders them."""
    if not message_id:
        return (0, 0)
    text = message_id.decode() if isinstance(message_id, bytes) else message_id
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq or 0))


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=timezone.utc)


def serve(
    settings: Settings, engine: store.Engine, broker: Broker, *, once: bool = False
) -> TickStats:
    """Run a dispatcher in this process until SIGINT/SIGTERM."""
    dispatcher = Dispatcher(settings, engine, broker)
    dispatcher.install_signal_handlers()
    return dispatcher.run(once=once)


def totals_line(stats: TickStats) -> str:
    return (
        f"applied {stats.applied} report(s), ignored {stats.ignored},"
        f" dispatched {stats.dispatched}, recovered {stats.recovered}"
    )
