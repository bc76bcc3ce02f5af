"""The job RQ runs for every task: run the handler, report the outcome.

It never opens the database: the outcome goes back through Redis, so a worker
host needs only Redis. The worker process that took the job (see
``bridge.broker.working``) has already checked that the attempt is current,
keeps its heartbeat and sends its ``started`` report; the outcome carries the
start time too, for a job too short to have sent it.

A failed handler is reported, then re-raised, so that RQ records the job as
failed with its traceback in its own registries (``rq info``, dashboards).
"""

import json
import traceback
from typing import Any

from bridge.broker.working import current_job, publish_many, publish_outcome, utc_now
from bridge.messages import Report, output_json, truncate
from bridge.states import ReportKind
from bridge.workers.context import TaskContext
from bridge.workers.registry import get_handler, wants_context


class HandlerFailed(Exception):
    """Raised after a failed handler's report is sent, so RQ marks the job failed."""


def run_task(**fields: Any) -> None:
    """Bridge's entry point (``messages.JOB_FUNCTION``); ``fields`` is a ``Dispatch``."""
    client, dispatch, worker = current_job()
    started_at = utc_now()
    failure: Exception | None = None
    context: TaskContext | None = None
    try:
        function = get_handler(dispatch.kind)
        payload = None if dispatch.payload is None else json.loads(dispatch.payload)
        if wants_context(dispatch.kind):
            context = TaskContext(
                dispatch,
                lambda reports: publish_many(client, dispatch.namespace, reports),
                worker,
            )
            value = function(payload, context)
        else:
            value = function(payload)
        report = Report(
            dispatch.task_id,
            dispatch.attempt,
            ReportKind.SUCCEEDED,
            dispatch.job_id,
            worker,
            output=output_json(value, dispatch.max_output),
            at=utc_now(),
            started_at=started_at,
        )
    except Exception as exc:
        failure = exc
        report = Report(
            dispatch.task_id,
            dispatch.attempt,
            ReportKind.FAILED,
            dispatch.job_id,
            worker,
            error=truncate(f"{type(exc).__name__}: {exc}", dispatch.max_output),
            traceback=truncate(traceback.format_exc(), dispatch.max_output),
            at=utc_now(),
            started_at=started_at,
        )
    notes = context.close() if context is not None else []
    publish_outcome(client, report, dispatch, notes)
    if failure is not None:
        raise HandlerFailed(report.error) from failure
