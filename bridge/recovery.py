"""How the dispatcher judges a task in flight against what Redis says: pure, no I/O.

The database says a task is ``queued`` or ``working``; Redis may disagree (it
lost the job, the worker died, the job hangs). Each rule below resolves one
such disagreement, so that no task stays in flight forever.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from bridge.states import TaskStatus


@dataclass(frozen=True)
class Flight:
    """A task in flight, as the database has it."""

    task_id: str
    status: TaskStatus
    attempt: int
    job_id: str | None
    queued_at: str | None
    started_at: str | None
    timeout: float | None
    worker: str | None
    queue: str = "bridge"


@dataclass(frozen=True)
class JobState:
    """A job, as Redis has it."""

    exists: bool
    status: str | None = None
    """RQ's job status: queued, started, finished, failed, stopped, canceled..."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    """When RQ saw the job end (finished, failed, stopped)."""
    waiting: bool = False
    """In the queue, waiting for a worker."""
    picked: bool = False
    """In RQ's intermediate queue: a worker took it and has not started it (yet)."""
    picked_for: float | None = None
    """Seconds the dispatcher has seen it picked and not started (None: not picked)."""
    heartbeat: bool = False
    """The worker process watching it renewed its heartbeat within the TTL."""
    refused: bool = False
    """A worker refused the job unrun (its record was changed into something unreadable)."""


@dataclass(frozen=True)
class Verdict:
    redispatch: bool
    """True: send again as a new attempt (not a failure). False: fail this attempt."""
    reason: str
    stop: bool = False
    """The attempt is alive and must be stopped (fenced even though it runs)."""


@dataclass(frozen=True)
class Limits:
    grace: float = 5.0
    """Seconds after dispatch (or after RQ saw a job end) before Redis's view is trusted."""
    queue_timeout: float = 600.0
    """Seconds a job may wait in the queue before it is sent again."""
    timeout_margin: float = 30.0
    """Seconds past a task's timeout before a still-working attempt is failed."""
    picked_grace: float = 5.0
    """Seconds a job may sit picked but not started (a worker stopped in between)."""
    report_grace: float = 60.0
    """Seconds a finished job's report may take to arrive before the attempt is re-sent."""
    heartbeats_back_in: float = 0.0
    """Seconds until the workers' heartbeats can be trusted again (Redis just restarted,
    or this dispatcher just started): until then a missing heartbeat proves nothing."""


def parse_time(text: str | None) -> datetime | None:
    """A stored or RQ time; None when absent or unreadable (Redis may hold anything)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "")).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _older(moment: datetime | None, now: datetime, seconds: float) -> bool:
    return moment is not None and now - moment > timedelta(seconds=seconds)


def judge(flight: Flight, job: JobState, *, now: datetime, limits: Limits) -> Verdict | None:
    """What to do with a task in flight, or None to leave it alone.

    The caller has applied every pending report first, so what is judged here is
    what no report explains. Death is presumed only on evidence: a job whose worker
    keeps its heartbeat is alive however long it runs (up to its timeout); a job RQ
    says finished has a report on its way.
    """
    queued_at = parse_time(flight.queued_at)
    if queued_at is None or not _older(queued_at, now, limits.grace):
        return None
    if not job.exists:
        return Verdict(True, "re-dispatched: its job was lost by Redis")
    if job.refused:
        return Verdict(True, "re-dispatched: a worker refused its job record as unreadable")
    if job.status == "finished":
        if _older(job.ended_at, now, limits.report_grace):
            return Verdict(
                True,
                f"re-dispatched: its job finished over {limits.report_grace:g}s ago"
                " and its report never arrived",
            )
        return None  # the report is on its way
    if job.heartbeat:
        started = job.started_at or parse_time(flight.started_at)
        if flight.status is TaskStatus.WORKING and flight.timeout and started is not None:
            if _older(started, now, flight.timeout + limits.timeout_margin):
                return Verdict(
                    False,
                    f"TimeoutError: still working {limits.timeout_margin:g}s past"
                    f" its timeout of {flight.timeout:g}s",
                    stop=True,
                )
        return None
    if job.status in ("failed", "stopped", "canceled"):
        if job.ended_at is None or _older(job.ended_at, now, limits.grace):
            return Verdict(
                False,
                f"WorkerLost: attempt {flight.attempt} ended without a report"
                f" (RQ marked its job {job.status}: the process running it died or was killed)",
            )
        return None
    started = job.started_at or parse_time(flight.started_at)
    if job.status == "started" or flight.status is TaskStatus.WORKING:
        if limits.heartbeats_back_in > 0:
            return None  # a live worker writes its heartbeat again at its next beat
        if started is None or _older(started, now, limits.grace):
            return Verdict(
                False,
                f"WorkerLost: worker {flight.worker or '?'} stopped sending heartbeats"
                f" while running attempt {flight.attempt} (killed, crashed or paused)",
            )
        return None
    if job.picked and not job.waiting:
        if job.picked_for is not None and job.picked_for > limits.picked_grace:
            return Verdict(
                True, "re-dispatched: a worker took its job and stopped before running it"
            )
        return None
    if not job.waiting:
        return Verdict(True, "re-dispatched: its job had left the queue without running")
    if _older(queued_at, now, limits.queue_timeout):
        return Verdict(True, f"re-dispatched: queued for over {limits.queue_timeout:g}s")
    return None
