"""The dispatcher: the loop that joins the store (SQL) and the broker (Redis/RQ).

Each tick, in one transaction: apply the reports read from Redis, claim ready
tasks into free slots as ``queued``. Then, after the commit: acknowledge the
reports and enqueue the jobs. A crash between commit and enqueue leaves tasks
``queued`` with no job; reconciliation sends them again (a new attempt).
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

from redis.exceptions import RedisError

from bridge import store
from bridge.broker import Broker
from bridge.messages import Dispatch, Report
from bridge.recovery import Flight, JobState, Limits, Verdict, judge
from bridge.settings import Settings
from bridge.states import ReportKind, TaskStatus

log = logging.getLogger("bridge.dispatcher")

LEASE_TTL = 15.0
"""Seconds a dispatcher's lease lasts unless renewed: a standby takes over after this."""
CHECK_EVERY = 1.0
"""Seconds between checks for lost jobs, dead workers and a restarted Redis."""
LOST_JOB_GRACE = 5.0
"""A job id missing from Redis this long after its dispatch means Redis lost it."""
TIMEOUT_MARGIN = 30.0
"""A task still ``working`` this long past its timeout is failed as stuck."""
QUEUE_TIMEOUT = 600.0
"""A job waiting in the queue this long is withdrawn and sent again."""
LEASE_MARGIN = 5.0
"""Dispatch only while the lease has this long left, so a successor cannot overlap."""
CONSUMER = "dispatcher"
"""One consumer name for every dispatcher of a queue (only the lease holder reads),
so a successor re-reads what a killed predecessor read but never acknowledged."""
MAX_BLOCK = 0.5
"""Longest blocking read on the report stream, so stop requests are seen quickly."""


@dataclass
class TickStats:
    applied: int = 0
    ignored: int = 0
    dispatched: int = 0
    recovered: int = 0


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
        self.lease_name = f"dispatcher:{self.settings.queue}"
        self._run_id: str | None = None
        self._next_check = 0.0
        self._lease_until = 0.0
        self._claim_wanted = True
        self._wakeup: datetime | None = None
        self._wakeup_stale = True
        self._picked_since: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping after this tick", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, once: bool = False) -> TickStats:
        """Dispatch until stopped (or one pass with ``once``); returns the totals."""
        totals = TickStats()
        if not self._wait_for_lease(once=once):
            return totals
        try:
            self.start(totals)
            while not self.stop_event.is_set():
                try:
                    self._add(totals, self.tick(block=not once))
                    if once:
                        break
                    self._maintain(totals)
                except RedisError as exc:
                    if once:
                        raise
                    # The database holds everything; once Redis answers again, the run-id
                    # check re-sends what it lost.
                    log.warning("Redis unavailable (%s); trying again", exc)
                    self.stop_event.wait(1.0)
        finally:
            self._release_lease()
        return totals

    def start(self, totals: TickStats | None = None) -> None:
        """Apply what a crashed predecessor left unacknowledged, rebuild slots, reconcile."""
        totals = totals or TickStats()
        if not self._renew_lease():
            raise store.StoreError("another dispatcher holds the lease for this queue")
        self.broker.ensure_group()
        self._run_id = self.broker.run_id()
        while True:  # drain every pending report before judging what is in flight
            stats = self.tick(block=False, claim=False)
            self._add(totals, stats)
            if stats.applied + stats.ignored == 0:
                break
        with store.writing(self.engine) as session:
            in_flight = store.reset_slots(session=session, slots=self.settings.slots)
        log.info("slots reset: %d task(s) in flight", len(in_flight))
        totals.recovered += self.reconcile(grace=0.0)

    # ------------------------------------------------------------------ the tick

    def tick(self, *, block: bool = True, claim: bool = True) -> TickStats:
        """Read reports (blocking), apply them and claim ready tasks in one commit, then
        acknowledge and enqueue. Claims only when something could have made a task
        ready or freed a slot, so an idle or "started"-only tick costs one read."""
        stats = TickStats()
        timeout_ms = int(self._block_seconds() * 1000) if block else 0
        incoming = self.broker.read_reports(CONSUMER, block_ms=timeout_ms or 1)
        reports = [m.report for m in incoming if m.report is not None]
        if len(reports) < len(incoming) or any(r.kind is not ReportKind.STARTED for r in reports):
            self._claim_wanted = True  # a nudge (tasks added or retried) or a freed slot
        if self._wakeup is not None and self._wakeup <= datetime.now(timezone.utc):
            self._claim_wanted = True  # a retry backoff ended
            self._wakeup_stale = True
        claiming = claim and self._claim_wanted and self._lease_valid()
        dispatches: list[Dispatch] = []
        if reports or claiming:
            with store.writing(self.engine) as session:
                if reports:
                    applied = store.apply_reports(
                        session=session, reports=reports, max_output=self.settings.max_output
                    )
                    stats.applied = sum(1 for a in applied if a.target is not None)
                    stats.ignored = len(applied) - stats.applied
                    if any(a.target is TaskStatus.AVAILABLE for a in applied):
                        self._wakeup_stale = True  # a failed attempt will be retried
                if claiming:
                    dispatches = store.claim_ready(session=session, slots=self.settings.slots)
                    self._claim_wanted = False
        self.broker.settle([m.message_id for m in incoming], dispatches)
        stats.dispatched = len(dispatches)
        if stats.dispatched or reports:
            log.debug("tick: %s", stats)
        return stats

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
        return max(wait, 0.01)

    # ------------------------------------------------------------------ recovery

    def _maintain(self, totals: TickStats) -> None:
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + CHECK_EVERY
        self._claim_wanted = True  # catch what no nudge announced (cancel, add without Redis)
        self._wakeup_stale = True
        if not self._renew_lease():
            log.warning("lost the dispatcher lease; waiting to take it back")
            if not self._wait_for_lease(once=False):
                return
            self.start(totals)
            return
        run_id = self.broker.run_id()
        if run_id != self._run_id:
            log.warning("Redis restarted (run id changed): re-dispatching everything in flight")
            self._run_id = run_id
            self.broker.ensure_group()
            totals.recovered += self.reconcile(grace=0.0, everything=True)
        else:
            totals.recovered += self.reconcile(grace=LOST_JOB_GRACE)

    def reconcile(self, *, grace: float, everything: bool = False) -> int:
        """Resolve every task in flight that Redis disagrees with (``recovery.judge``).

        Lost jobs are sent again as a new attempt; attempts whose worker died or
        hung are failed (and retried if attempts are left). With ``everything``
        (Redis restarted: its view of any job is worthless) all are sent again.
        Returns how many tasks it acted on.
        """
        with store.reading(self.engine) as session:
            flights = store.in_flight(session=session)
        if not flights:
            self._picked_since.clear()
            return 0
        jobs = self._observe(self.broker.job_states([f.job_id for f in flights if f.job_id]))
        limits = Limits(grace=grace, queue_timeout=QUEUE_TIMEOUT, timeout_margin=TIMEOUT_MARGIN)
        moment = datetime.now(timezone.utc)
        resend: dict[str, list[Flight]] = {}
        failures: list[Report] = []
        for flight in flights:
            job = jobs.get(flight.job_id or "", JobState(exists=False))
            if everything:
                verdict: Verdict | None = Verdict(True, "re-dispatched: Redis restarted")
            else:
                verdict = judge(flight, job, now=moment, limits=limits)
            if verdict is None:
                continue
            if verdict.redispatch:
                resend.setdefault(verdict.reason, []).append(flight)
            else:
                failures.append(
                    Report(
                        flight.task_id,
                        flight.attempt,
                        ReportKind.FAILED,
                        flight.worker,
                        error=verdict.reason,
                    )
                )
        if not resend and not failures:
            return 0
        if not self._lease_valid():
            return 0
        dispatches = []
        with store.writing(self.engine) as session:
            for reason, group in resend.items():
                dispatches += store.redispatch(session=session, tasks=group, reason=reason)
            if failures:
                store.apply_reports(
                    session=session, reports=failures, max_output=self.settings.max_output
                )
        self.broker.withdraw([f.job_id for group in resend.values() for f in group if f.job_id])
        self.broker.enqueue(dispatches)
        for d in dispatches:
            log.warning("task %r sent again as attempt %d: %s", d.task_id, d.attempt, d.job_id)
        for r in failures:
            log.warning("task %r attempt %d failed: %s", r.task_id, r.attempt, r.error)
        return len(dispatches) + len(failures)

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
            if self._renew_lease():
                if announced:
                    log.info("took over the dispatcher lease")
                return True
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
        return time.time() + LEASE_MARGIN < self._lease_until

    def _renew_lease(self) -> bool:
        clock = time.time()
        with store.writing(self.engine) as session:
            ok = store.acquire_lease(
                session=session, name=self.lease_name, holder=self.name, ttl=LEASE_TTL, clock=clock
            )
        self._lease_until = clock + LEASE_TTL if ok else 0.0
        return ok

    def _release_lease(self) -> None:
        try:
            with store.writing(self.engine) as session:
                store.release_lease(session=session, name=self.lease_name, holder=self.name)
        except store.StoreError as exc:
            log.warning("could not release the lease: %s", exc)

    @staticmethod
    def _add(totals: TickStats, stats: TickStats) -> None:
        totals.applied += stats.applied
        totals.ignored += stats.ignored
        totals.dispatched += stats.dispatched
        totals.recovered += stats.recovered


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
