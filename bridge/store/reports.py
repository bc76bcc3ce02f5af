"""Applying worker reports under the fencing rule.

A batch of reports is decided in Python (``states.decide_report``, in order, with
each task's state carried from one report to the next), then written with one
prepared statement per kind of change, executed for many rows at once. Every
UPDATE is guarded on the status and the job (the fencing token) the decision was
made from, so a change made meanwhile by someone else aborts the whole batch.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, insert, select, text
from sqlmodel import Session

from bridge.defaults import MAX_LOG_LINE, MAX_LOG_LINES
from bridge.messages import Report, truncate
from bridge.states import (
    IN_FLIGHT,
    NOTE_KINDS,
    ReportKind,
    TaskStatus,
    decide_report,
    note_counts,
)
from bridge.store.engine import StoreError, now, stamp
from bridge.store.locks import lock_dependency_counts
from bridge.store.tables import LOGS, TASKS, _chunks, _event, _record, _release_slots

_GUARD = " WHERE id = :id AND status = :source AND job_id = :job"
_STARTED = text(
    "UPDATE tasks SET status = 'working', worker = :worker, started_at = :started_at,"
    " updated_at = :at" + _GUARD
)
_SUCCEEDED = text(
    "UPDATE tasks SET status = 'done', output = :output, error = NULL,"
    " completed_at = :completed_at, note = NULL, updated_at = :at" + _GUARD
)
_RETRYING = text(
    "UPDATE tasks SET status = 'available', error = :error, failures = failures + 1,"
    " worker = COALESCE(:worker, worker), not_before = :not_before, note = :note,"
    " updated_at = :at" + _GUARD
)
_FAILED = text(
    "UPDATE tasks SET status = 'failed', error = :error, failures = failures + 1,"
    " worker = COALESCE(:worker, worker), completed_at = :completed_at, note = NULL,"
    " updated_at = :at" + _GUARD
)
_SLOT_WORKER = text(
    "UPDATE worker_slots SET worker_id = :worker, updated_at = :at WHERE task_id = :id"
)
_UNBLOCK = text(
    "UPDATE tasks SET pending_deps = pending_deps - 1"
    " WHERE id IN (SELECT task_id FROM task_edges WHERE depends_on = :dep)"
)
_PROGRESS = text(
    "UPDATE tasks SET progress = :progress, progress_message = :message"
    " WHERE id = :id AND job_id = :job AND status IN ('queued', 'working')"
)
"""Before the outcomes of the batch: a note was kept only while its attempt was in
flight, which the task was when the batch began (outcomes only ever leave flight)."""
_INSERT_LOGS = insert(LOGS)
_ORDER = (_STARTED, _SUCCEEDED, _RETRYING, _FAILED)
"""Execution order: a task's start always precedes its outcome within one batch."""


@dataclass(frozen=True)
class Applied:
    report: Report
    target: TaskStatus | None
    """None: the report was ignored (stale, duplicate, late or for an unknown task)."""
    reason: str


def apply_reports(
    *, session: Session, reports: Sequence[Report], max_output: int = 1024 * 1024
) -> list[Applied]:
    """Apply worker reports with the fencing rule, in order, in the caller's transaction.

    A report changes a task only if it carries the task's current attempt and the
    task is in flight; anything else is recorded as ignored and changes nothing.
    """
    lock_dependency_counts(session)  # before an outcome can unblock dependents
    conn = session.connection()
    state = _current_state(session, reports)
    at = now()
    results: list[Applied] = []
    events: list[dict[str, Any]] = []
    writes: dict[Any, list[dict[str, Any]]] = {statement: [] for statement in _ORDER}
    slot_workers: list[dict[str, Any]] = []
    done: list[str] = []
    released: list[str] = []
    progress: dict[str, dict[str, Any]] = {}
    log_rows: list[dict[str, Any]] = []
    for report, folded in _with_folded_starts(reports):
        current = state.get(report.task_id)
        if current is None:
            results.append(Applied(report, None, "unknown task"))
            continue
        status = TaskStatus(current["status"])
        if report.kind in NOTE_KINDS:
            results.append(_note(report, status, current, progress, log_rows, max_output))
            continue
        decision = decide_report(
            status=status,
            task_attempt=current["attempts"],
            report_attempt=report.attempt,
            kind=report.kind,
            failures=current["failures"],
            max_attempts=current["max_attempts"],
            task_job=current["job_id"],
            report_job=report.job_id,
        )
        if decision.target is None and folded and report.job_id == current["job_id"]:
            continue  # the start was already reported on its own: nothing to record
        if decision.target is None:
            detail = f"ignored: {decision.reason}"
            events.append(
                _event(
                    report.task_id,
                    status.value,
                    status.value,
                    report.attempt,
                    at,
                    detail,
                    report.worker,
                )
            )
            results.append(Applied(report, None, decision.reason))
            continue
        row: dict[str, Any] = {
            "id": report.task_id,
            "source": status.value,
            "job": report.job_id,
            "at": at,
        }
        detail = decision.reason
        if report.kind is ReportKind.STARTED:
            row.update(worker=report.worker, started_at=report.at or at)
            writes[_STARTED].append(row)
            if report.worker:
                slot_workers.append({"worker": report.worker, "at": at, "id": report.task_id})
        elif report.kind is ReportKind.SUCCEEDED:
            output = truncate(report.output, max_output) if report.output else report.output
            row.update(output=output, completed_at=report.at or at)
            writes[_SUCCEEDED].append(row)
            done.append(report.task_id)
        else:
            error = truncate(report.error or "Error: unknown failure", max_output)
            row.update(error=error, worker=report.worker)
            if decision.target is TaskStatus.AVAILABLE:
                due = stamp(
                    datetime.now(timezone.utc) + timedelta(seconds=decision.retry_in or 0.0)
                )
                row.update(
                    not_before=due,
                    note=f"attempt {report.attempt} failed ({error.splitlines()[0][:200]});"
                    f" retry {current['failures'] + 2} of {current['max_attempts']}"
                    f" not before {due[:19]} UTC",
                )
                writes[_RETRYING].append(row)
            else:
                row.update(completed_at=report.at or at)
                writes[_FAILED].append(row)
            current["failures"] += 1
            detail = f"{decision.reason}: {error}"
            if report.traceback:
                detail += "\n" + truncate(report.traceback, max_output)
        events.append(
            _event(
                report.task_id,
                status.value,
                decision.target.value,
                report.attempt,
                at,
                detail,
                report.worker,
            )
        )
        current["status"] = decision.target.value
        if decision.target not in IN_FLIGHT:
            released.append(report.task_id)
        results.append(Applied(report, decision.target, decision.reason))

    if progress:
        conn.execute(_PROGRESS, list(progress.values()))
    if log_rows:
        conn.execute(_INSERT_LOGS, log_rows)
    for statement in _ORDER:
        rows = writes[statement]
        if rows and conn.execute(statement, rows).rowcount != len(rows):
            raise StoreError("a task changed under the dispatcher while applying reports")
    # A slot freed in this same batch forgets its worker anyway: one statement less
    # for every short task whose start and outcome arrive together.
    freed = set(released)
    slot_workers = [row for row in slot_workers if row["id"] not in freed]
    if slot_workers:
        conn.execute(_SLOT_WORKER, slot_workers)
    _release_slots(session, released, at)
    if done:
        conn.execute(_UNBLOCK, [{"dep": task_id} for task_id in done])
    _record(session, events)
    return results


def _note(
    report: Report,
    status: TaskStatus,
    current: dict[str, Any],
    progress: dict[str, dict[str, Any]],
    log_rows: list[dict[str, Any]],
    max_output: int,
) -> Applied:
    """Keep a progress or log report of the task's own attempt; drop any other quietly."""
    if not note_counts(
        status=status, task_job=current["job_id"], report_job=report.job_id, kind=report.kind
    ):
        return Applied(report, None, f"{report.kind.value} of another attempt, dropped")
    if report.kind is ReportKind.PROGRESS:
        message = None if report.message is None else truncate(report.message, 1000)
        progress[report.task_id] = {
            "id": report.task_id,
            "job": report.job_id,
            "progress": report.progress,
            "message": message,
        }
        return Applied(report, None, "progress noted")
    lines = _log_lines(report.lines)
    if lines is None:
        return Applied(report, None, "log lines that are not a list of [at, level, message]")
    for at, level, message in lines[: MAX_LOG_LINES + 1]:
        log_rows.append(
            {
                "task_id": report.task_id,
                "attempt": report.attempt,
                "at": at[:26],
                "level": level[:20],
                "message": truncate(message, min(max_output, MAX_LOG_LINE)),
            }
        )
    return Applied(report, None, "log lines kept")


def _log_lines(text_value: str | None) -> list[tuple[str, str, str]] | None:
    try:
        lines = json.loads(text_value or "")
    except ValueError:
        return None
    if not isinstance(lines, list):
        return None
    kept = []
    for line in lines:
        if not (
            isinstance(line, list) and len(line) == 3 and all(isinstance(v, str) for v in line)
        ):
            return None
        kept.append((line[0], line[1], line[2]))
    return kept


def _with_folded_starts(reports: Sequence[Report]) -> list[tuple[Report, bool]]:
    """An outcome that carries ``started_at`` stands for its start too: apply both.

    The folded start is marked, so that it is dropped without a trace when the start
    was already reported on its own (the worker cannot know whether it was).
    """
    expanded: list[tuple[Report, bool]] = []
    for report in reports:
        if report.started_at and report.kind is not ReportKind.STARTED:
            start = Report(
                report.task_id,
                report.attempt,
                ReportKind.STARTED,
                report.job_id,
                report.worker,
                at=report.started_at,
            )
            expanded.append((start, True))
        expanded.append((report, False))
    return expanded


_CURRENT_STATE = select(
    TASKS.c.id,
    TASKS.c.status,
    TASKS.c.attempts,
    TASKS.c.failures,
    TASKS.c.max_attempts,
    TASKS.c.job_id,
).where(TASKS.c.id.in_(bindparam("ids", expanding=True)))


def _current_state(session: Session, reports: Sequence[Report]) -> dict[str, dict[str, Any]]:
    """Status, attempt and failure count of every task the reports name."""
    conn = session.connection()
    state: dict[str, dict[str, Any]] = {}
    ids = sorted({r.task_id for r in reports})
    for chunk in _chunks(ids):
        for row in conn.execute(_CURRENT_STATE, {"ids": list(chunk)}):
            state[row.id] = dict(row._mapping)
    return state
