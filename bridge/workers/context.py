"""``ctx``: what a ``@handler(name, context=True)`` handler sees of its task.

Everything comes with the job (workers need only Redis): the task's id as its graph
wrote it, its run, the attempt, and its dependencies' outputs (``inputs``). What the
handler says while it runs (``progress``, ``log``) goes back through the report
stream: progress at most every ``PROGRESS_EVERY`` seconds, log lines in batches, both
from a small thread so a handler that calls neither again still has its last word
sent; whatever is still held when the handler returns goes out just before the
outcome, in the same round trip.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from bridge.defaults import (
    LOG_FLUSH_EVERY,
    MAX_LOG_BYTES,
    MAX_LOG_LINE,
    MAX_LOG_LINES,
    PROGRESS_EVERY,
)
from bridge.messages import Dispatch, Report, decode_output
from bridge.reporting import LogCap, Throttle
from bridge.states import ReportKind

Send = Callable[[Sequence[Report]], None]
"""Appends reports to the database's report stream (the broker's ``publish_many``)."""

log = logging.getLogger("bridge.worker")

TASK_LOGGER = "bridge.task"
"""Parent of every ``ctx.log``: lines also reach the worker's own log configuration."""


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


class _Capture(logging.Handler):
    def __init__(self, context: "TaskContext") -> None:
        super().__init__(logging.DEBUG)
        self.context = context
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # a bad format string must not fail the handler
            message = f"{record.msg!r} (unformattable: {record.args!r})"
        self.context._keep(_stamp(record.created), record.levelname, message)


class TaskContext:
    """The second argument of a context handler (``f(payload, ctx)``)."""

    def __init__(
        self,
        dispatch: Dispatch,
        send: Send,
        worker: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dispatch = dispatch
        self._send = send
        self._worker = worker
        self._clock = clock
        self.task_id: str = dispatch.graph_id
        """The task's id as its graph wrote it (without the run's scope)."""
        self.run: str | None = dispatch.run
        """The run the task belongs to."""
        self.attempt: int = dispatch.attempt
        """This attempt's number, 1 for the first."""
        self.max_attempts: int = dispatch.max_attempts
        self.inputs: dict[str, Any] = {
            name: decode_output(output) for name, output in (dispatch.inputs or {}).items()
        }
        """Each dependency's id (as the graph wrote it) -> its decoded output."""
        self.log: logging.Logger = logging.Logger(f"{TASK_LOGGER}.{self.task_id}", logging.DEBUG)
        """A logger whose lines are kept with this attempt (``bridge logs ID``)."""
        self.log.parent = logging.getLogger(TASK_LOGGER)
        self.log.addHandler(_Capture(self))
        self._cap = LogCap(MAX_LOG_LINES, MAX_LOG_BYTES, MAX_LOG_LINE)
        self._lines: list[list[str]] = []
        self._progress: Report | None = None
        self._throttle = Throttle(PROGRESS_EVERY)
        self._log_due: float | None = None
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._unsent: list[Report] = []

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_id!r} run={self.run!r} attempt={self.attempt}>"

    # ------------------------------------------------------------------ handler side

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Say how far the handler is (0 to 1, clamped), with an optional message;
        ``bridge show`` prints ``progress: 40% downloading`` while the task runs."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"progress takes a number from 0 to 1, got {fraction!r}")
        if fraction != fraction:
            raise ValueError("progress takes a number from 0 to 1, got NaN")
        report = Report(
            self._dispatch.task_id,
            self._dispatch.attempt,
            ReportKind.PROGRESS,
            self._dispatch.job_id,
            self._worker,
            at=_stamp(time.time()),
            progress=min(1.0, max(0.0, float(fraction))),
            message=None if message is None else str(message)[:1000],
        )
        with self._lock:
            self._progress = report
            self._wake()

    def _keep(self, at: str, level: str, message: str) -> None:
        with self._lock:
            kept = self._cap.admit(message)
            if kept is None:
                return
            self._lines.append([at, level, kept])
            if self._log_due is None:
                self._log_due = self._clock() + LOG_FLUSH_EVERY
            self._wake()

    # ------------------------------------------------------------------ sending

    def _wake(self) -> None:
        if self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bridge-ctx", daemon=True)
            self._thread.start()
        self._lock.notify()

    def _due(self, moment: float) -> tuple[list[Report], float | None]:
        """What may be sent now, and how long until something else may (None: nothing
        waits). Called with the lock held."""
        out: list[Report] = []
        waits: list[float] = []
        if self._lines and self._log_due is not None:
            if moment >= self._log_due:
                out.append(self._take_lines())
            else:
                waits.append(self._log_due - moment)
        if self._progress is not None:
            if self._throttle.ready(moment):
                out.append(self._progress)
                self._progress = None
            else:
                waits.append(self._throttle.wait(moment))
        return out, min(waits) if waits else None

    def _take_lines(self) -> Report:
        lines, self._lines, self._log_due = self._lines, [], None
        return Report(
            self._dispatch.task_id,
            self._dispatch.attempt,
            ReportKind.LOG,
            self._dispatch.job_id,
            self._worker,
            lines=json.dumps(lines, ensure_ascii=False),
        )

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                reports, wait = self._due(self._clock())
                if reports:
                    self._lock.release()  # the handler keeps logging while we send
                    try:
                        self._send(reports)
                    except Exception as exc:  # Redis away: the outcome's flush tries again
                        log.debug("progress or log lines not sent: %s", exc)
                        self._lock.acquire()
                        self._unsent.extend(reports)
                        continue
                    self._lock.acquire()
                    continue
                self._lock.wait(wait)

    def close(self) -> list[Report]:
        """Stop sending; what is still held (log lines, then the latest progress, then a
        line saying how many were dropped) is returned, to go out before the outcome."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            marker = self._cap.marker()
            if marker is not None:
                self._cap.dropped = 0
                self._lines.append([_stamp(time.time()), "WARNING", marker])
            held, self._unsent = self._unsent, []
            if self._lines:
                held.append(self._take_lines())
            if self._progress is not None:
                held.append(self._progress)
                self._progress = None
            return held
