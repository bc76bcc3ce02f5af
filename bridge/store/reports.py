"""Applying worker reports under the fencing rule."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, text, update
from sqlmodel import Session

from bridge.messages import Report, truncate
from bridge.states import (
    IN_FLIGHT,
    ReportKind,
    TaskStatus,
    decide_report,
)
from bridge.store.engine import StoreError, now, stamp
from bridge.store.tables import SLOTS, TASKS, _chunks, _event, _record, _release_slots


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
    conn = session.connection()
    ids = sorted({r.task_id for r in reports})
    state: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ids):
        for row in conn.execute(
            select(
                TASKS.c.id, TASKS.c.status, TASKS.c.attempts, TASKS.c.failures, TASKS.c.max_attempts
            ).where(TASKS.c.id.in_(chunk))
        ):
            state[row.id] = dict(row._mapping)
    at = now()
    results: list[Applied] = []
    events: list[dict[str, Any]] = []
    done: list[str] = []
    released: list[str] = []
    for report in reports:
        current = state.get(report.task_id)
        if current is None:
            results.append(Applied(report, None, "unknown task"))
            continue
        status = TaskStatus(current["status"])
        decision = decide_report(
            status=status,
            task_attempt=current["attempts"],
            report_attempt=report.attempt,
            kind=report.kind,
            failures=current["failures"],
            max_attempts=current["max_attempts"],
        )
        if decision.target is None:
            events.append(
                _event(
                    report.task_id,
                    status.value,
                    status.value,
                    report.attempt,
                    at,
                    f"ignored: {decision.reason}",
                    report.worker,
                )
            )
            results.append(Applied(report, None, decision.reason))
            continue
        values: dict[str, Any] = {"status": decision.target.value, "updated_at": at}
        detail = decision.reason
        if report.kind is ReportKind.STARTED:
            values.update(worker=report.worker, started_at=report.at or at)
        elif report.kind is ReportKind.SUCCEEDED:
            values.update(
                output=truncate(report.output, max_output) if report.output else report.output,
                error=None,
                completed_at=report.at or at,
                note=None,
            )
        else:
            error = truncate(report.error or "Error: unknown failure", max_output)
            values.update(error=error, failures=current["failures"] + 1)
            if report.worker:
                values["worker"] = report.worker
            if decision.target is TaskStatus.AVAILABLE:
                delay = decision.retry_in or 0.0
                due = datetime.now(timezone.utc) + timedelta(seconds=delay)
                values.update(
                    not_before=stamp(due),
                    note=f"attempt {report.attempt} failed ({error.splitlines()[0][:200]});"
                    f" retry {current['failures'] + 2} of {current['max_attempts']}"
                    f" not before {stamp(due)[:19]} UTC",
                )
            else:
                values.update(completed_at=report.at or at, note=None)
            detail = f"{decision.reason}: {error}"
            if report.traceback:
                detail += "\n" + truncate(report.traceback, max_output)
        changed = conn.execute(
            update(TASKS)
            .where(
                TASKS.c.id == report.task_id,
                TASKS.c.status == status.value,
                TASKS.c.attempts == report.attempt,
            )
            .values(**values)
        ).rowcount
        if changed != 1:
            raise StoreError(f"task {report.task_id!r} changed under the dispatcher")
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
        if "failures" in values:
            current["failures"] = values["failures"]
        if decision.target is TaskStatus.WORKING and report.worker:
            conn.execute(
                update(SLOTS)
                .where(SLOTS.c.task_id == report.task_id)
                .values(worker_id=report.worker, updated_at=at)
            )
        if decision.target not in IN_FLIGHT:
            released.append(report.task_id)
        if decision.target is TaskStatus.DONE:
            done.append(report.task_id)
        results.append(Applied(report, decision.target, decision.reason))
    _release_slots(session, released, at)
    if done:
        conn.execute(
            text(
                "UPDATE tasks SET pending_deps = pending_deps - 1"
                " WHERE id IN (SELECT task_id FROM task_edges WHERE depends_on = :dep)"
            ),
            [{"dep": task_id} for task_id in done],
        )
    _record(session, events)
    return results
