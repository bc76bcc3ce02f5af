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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import FrameType

from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from bridge import store
from bridge.broker import Broker
from bridge.messages import Report
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
    engine: Engine
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
                self._add(totals, self.tick(block=not once))
                if once:
                    break
                self._maintain(totals)
        finally:
            self._release_lease()
        return totals

    def start(self, totals: TickStats | None = None) -> None:
        """Apply what a crashed predecessor left unacknowledged, rebuild slots, reconcile."""
        totals = totals or TickStats()
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
        stats = TickStats()
        timeout_ms = int(self._block_seconds() * 1000) if block else 0
        incoming = self.broker.read_reports(self.name, block_ms=timeout_ms or 1)
        reports = [m.report for m in incoming if m.report is not None]
        with store.writing(self.engine) as session:
            if reports:
                applied = store.apply_reports(
                    session=session, reports=reports, max_output=self.settings.max_output
                )
                stats.applied = sum(1 for a in applied if a.target is not None)
                stats.ignored = len(applied) - stats.applied
            dispatches = (
                store.claim_ready(session=session, slots=self.settings.slots) if claim else []
            )
        self.broker.ack([m.message_id for m in incoming])
        self.broker.enqueue(dispatches)
        stats.dispatched = len(dispatches)
        if stats.dispatched or reports:
            log.debug("tick: %s", stats)
        return stats

    def _block_seconds(self) -> float:
        wait = min(MAX_BLOCK, max(0.0, self._next_check - time.monotonic()))
        with store.reading(self.engine) as session:
            due = store.next_wakeup(session=session)
        if due is not None:
            until = (_parse(due) - datetime.now(timezone.utc)).total_seconds()
            wait = min(wait, max(0.0, until))
        return max(wait, 0.01)

    # ------------------------------------------------------------------ recovery

    def _maintain(self, totals: TickStats) -> None:
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + CHECK_EVERY
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
            totals.recovered += self.reconcile(grace=0.0)
        else:
            totals.recovered += self.reconcile(grace=LOST_JOB_GRACE)

    def reconcile(self, *, grace: float) -> int:
        """Re-dispatch tasks whose job Redis lost; fail attempts whose worker died or hung.

        Returns how many tasks it acted on.
        """
        with store.reading(self.engine) as session:
            flights = store.in_flight(session=session)
        if not flights:
            return 0
        cutoff = store.stamp(datetime.now(timezone.utc) - timedelta(seconds=grace))
        old = [f for f in flights if f.job_id and (f.queued_at or "") <= cutoff]
        lost_ids = self.broker.missing_jobs([f.job_id for f in old if f.job_id])
        lost = [f for f in old if f.job_id in lost_ids]
        working = [
            f for f in flights if f.status is TaskStatus.WORKING and f.job_id not in lost_ids
        ]
        dead_ids = self.broker.silent_jobs([f.job_id for f in working if f.job_id])
        failures = [
            _synthetic_failure(
                f,
                f"WorkerLost: worker {f.worker or '?'} stopped sending heartbeats"
                f" while running attempt {f.attempt} (killed or crashed)",
            )
            for f in working
            if f.job_id in dead_ids
        ]
        failures += [
            _synthetic_failure(
                f,
                f"TimeoutError: still working {TIMEOUT_MARGIN:g}s past its timeout of {f.timeout}s",
            )
            for f in working
            if f.job_id not in dead_ids and _overdue(f)
        ]
        dispatches = []
        with store.writing(self.engine) as session:
            if lost:
                dispatches = store.redispatch(
                    session=session, tasks=lost, reason="re-dispatched: its job was lost by Redis"
                )
            if failures:
                store.apply_reports(
                    session=session, reports=failures, max_output=self.settings.max_output
                )
        self.broker.enqueue(dispatches)
        for d in dispatches:
            log.warning(
                "task %r: job lost by Redis, sent again as attempt %d", d.task_id, d.attempt
            )
        for r in failures:
            log.warning("task %r attempt %d: %s", r.task_id, r.attempt, r.error)
        return len(dispatches) + len(failures)

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

    def _renew_lease(self) -> bool:
        with store.writing(self.engine) as session:
            ok = store.acquire_lease(
                session=session,
                name=self.lease_name,
                holder=self.name,
                ttl=LEASE_TTL,
                clock=time.time(),
            )
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


def _synthetic_failure(flight: store.InFlight, error: str) -> Report:
    return Report(flight.task_id, flight.attempt, ReportKind.FAILED, flight.worker, error=error)


def _overdue(flight: store.InFlight) -> bool:
    if not flight.timeout or not flight.started_at:
        return False
    limit = _parse(flight.started_at) + timedelta(seconds=flight.timeout + TIMEOUT_MARGIN)
    return datetime.now(timezone.utc) > limit


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=timezone.utc)


def serve(settings: Settings, engine: Engine, broker: Broker, *, once: bool = False) -> TickStats:
    """Run a dispatcher in this process until SIGINT/SIGTERM."""
    dispatcher = Dispatcher(settings, engine, broker)
    dispatcher.install_signal_handlers()
    try:
        return dispatcher.run(once=once)
    except RedisError as exc:
        raise store.StoreError(f"lost Redis: {exc}") from None


def totals_line(stats: TickStats) -> str:
    return (
        f"applied {stats.applied} report(s), ignored {stats.ignored},"
        f" dispatched {stats.dispatched}, recovered {stats.recovered}"
    )


__all__: Sequence[str] = ["Dispatcher", "TickStats", "serve", "totals_line"]
