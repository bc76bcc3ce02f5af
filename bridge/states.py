"""The task state machine: one table, pure functions, no I/O.

``ALLOWED`` states which transitions exist. The report rule (``decide_report``)
only ever chooses one of them (a property test checks it), and the admin
commands (retry, cancel) guard their UPDATEs with ``sources_of``. The dispatch
and report UPDATEs guard on the exact status and job they were decided from.
"""

from dataclasses import dataclass
from enum import Enum

from bridge.defaults import BACKOFF_BASE, BACKOFF_CAP


class TaskStatus(str, Enum):
    AVAILABLE = "available"
    """Waiting for dependencies, a free slot, or the end of a retry backoff."""
    QUEUED = "queued"
    """Committed for dispatch; its RQ job is enqueued (or about to be)."""
    WORKING = "working"
    """A worker reported that it started the current attempt."""
    DONE = "done"
    """The handler returned; its value is in ``output``. Final."""
    FAILED = "failed"
    """The last attempt failed and no attempts are left. ``bridge retry`` reopens it."""
    CANCELLED = "cancelled"
    """A user stopped it. ``bridge retry`` reopens it."""

    def __str__(self) -> str:
        return self.value


IN_FLIGHT = frozenset({TaskStatus.QUEUED, TaskStatus.WORKING})
FINISHED_BADLY = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})

ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.AVAILABLE: frozenset(
        {TaskStatus.QUEUED, TaskStatus.WORKING, TaskStatus.CANCELLED, TaskStatus.FAILED}
    ),
    TaskStatus.QUEUED: frozenset(
        {
            TaskStatus.WORKING,
            TaskStatus.DONE,
            TaskStatus.FAILED,
            TaskStatus.AVAILABLE,
            TaskStatus.QUEUED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.WORKING: frozenset(
        {
            TaskStatus.DONE,
            TaskStatus.FAILED,
            TaskStatus.AVAILABLE,
            TaskStatus.QUEUED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.DONE: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.AVAILABLE}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.AVAILABLE}),
}
"""``available -> working`` is an agent claiming an external task (it is never queued);
``queued -> queued`` and ``working -> queued`` are re-dispatches of a lost job
(a new attempt); ``-> available`` from in flight is a failed attempt with retries left;
``available -> failed`` is a task that cannot be sent at all (its dependencies' outputs
exceed ``BRIDGE_MAX_INPUTS``): it fails at dispatch, no attempt is made."""


def sources_of(target: TaskStatus) -> tuple[str, ...]:
    """Every status from which ``target`` may be reached, for a guarded UPDATE."""
    return tuple(sorted(s.value for s, targets in ALLOWED.items() if target in targets))


class ReportKind(str, Enum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PROGRESS = "progress"
    """A running handler's fraction done (``ctx.progress``); never changes the state."""
    LOG = "log"
    """Lines a running handler logged (``ctx.log``); never changes the state."""


NOTE_KINDS = frozenset({ReportKind.PROGRESS, ReportKind.LOG})
"""Reports that note something about the current attempt without moving the task: they
are kept only for the attempt that is the task's own (its job id), and a stale one is
dropped without an audit row (a superseded handler may send them twice a second)."""
TRANSITION_KINDS = tuple(k for k in ReportKind if k not in NOTE_KINDS)
"""Reports the fencing rule (``decide_report``) decides."""


def backoff_seconds(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff after the ``failures``-th failed attempt (1-based)."""
    return min(cap, base * 2.0 ** min(max(0, failures - 1), 64))


@dataclass(frozen=True)
class Decision:
    """What a report does to a task: the target status, or ``None`` to ignore it."""

    target: TaskStatus | None
    reason: str
    retry_in: float | None = None


def decide_report(
    *,
    status: TaskStatus,
    task_attempt: int,
    report_attempt: int,
    kind: ReportKind,
    failures: int,
    max_attempts: int,
    task_job: str | None = None,
    report_job: str | None = None,
) -> Decision:
    """The fencing rule: a report counts only for the current attempt of a task in flight.

    The attempt is identified by its job id, which carries a fencing token unique over
    the database's life (``task_job``/``report_job``); the attempt number alone would
    repeat after ``clean`` or for a re-added id. Late, duplicate or stale reports are
    ignored, and the caller records them as such. Notes (progress, log lines) never
    move a task: they are decided by ``note_counts``.
    """
    if report_attempt != task_attempt or report_job != task_job:
        return Decision(
            None,
            f"stale report for attempt {report_attempt} ({report_job or 'no job'}),"
            f" task is at attempt {task_attempt} ({task_job or 'no job'})",
        )
    if status not in IN_FLIGHT:
        return Decision(None, f"report '{kind.value}' arrived after the task became {status.value}")
    if kind in NOTE_KINDS:
        return Decision(None, f"a {kind.value} report changes no state")
    if kind is ReportKind.STARTED:
        if status is TaskStatus.WORKING:
            return Decision(None, "duplicate start report")
        return Decision(TaskStatus.WORKING, "worker started")
    if kind is ReportKind.SUCCEEDED:
        return Decision(TaskStatus.DONE, "handler returned")
    if failures + 1 < max_attempts:
        delay = backoff_seconds(failures + 1)
        return Decision(TaskStatus.AVAILABLE, f"attempt failed, retry in {delay:g}s", delay)
    return Decision(TaskStatus.FAILED, "attempt failed, no attempts left")


def note_counts(
    *, status: TaskStatus, task_job: str | None, report_job: str, kind: ReportKind
) -> bool:
    """Whether a note is kept: log lines of the task's own attempt (its job id, whatever
    its state now), progress only while that attempt is in flight."""
    if report_job != task_job:
        return False
    return kind is ReportKind.LOG or status in IN_FLIGHT
