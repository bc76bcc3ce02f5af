"""The job RQ runs for every task: report start, run the handler, report the outcome.

It never opens the database: everything goes back through Redis, so a worker
host needs only Redis. While the handler runs, a heartbeat key is renewed; if
the process dies (SIGKILL, OOM), the key expires and the dispatcher knows.

A handler that returns within ``START_REPORT_DELAY`` sends one report, its
outcome carrying its start time; a longer one reports its start when the delay
is up. That halves the messages the dispatcher handles for short tasks.
"""

import json
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rq import get_current_job

from bridge.broker import publish
from bridge.messages import Report, cancel_key, heartbeat_key, output_json, truncate
from bridge.states import ReportKind
from bridge.workers.registry import get_handler

HEARTBEAT_TTL = 10
"""Seconds a heartbeat lives; the dispatcher declares a worker dead once it expires."""
HEARTBEAT_EVERY = 2.0
START_REPORT_DELAY = 0.1
"""Seconds a task runs before its ``started`` report is sent on its own."""


@dataclass
class Watch:
    """One running job, as the monitor thread sees it."""

    client: Any
    queue: str
    worker: str
    started: Report
    start_due: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    start_sent: bool = False
    finished: bool = False


class Monitor:
    """One thread per process: sends delayed start reports and renews heartbeats.

    A forking worker runs each job in a fresh child, which starts its own thread;
    a simple worker reuses one thread for all its jobs.
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._watches: dict[str, Watch] = {}
        self._pid: int | None = None

    def begin(self, key: str, watch: Watch) -> None:
        with self._wake:
            self._watches[key] = watch
            if self._pid != os.getpid():  # first job in this process (or a forked child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="bridge-monitor", daemon=True).start()
            self._wake.notify()

    def end(self, key: str) -> bool:
        """Stop watching; True if the start was already reported on its own.

        The heartbeat key is left to expire, after the outcome is reported.
        """
        with self._wake:
            watch = self._watches.pop(key)
        with watch.lock:  # waits for a start report being sent right now
            watch.finished = True
            return watch.start_sent

    def _run(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_EVERY
        while True:
            with self._wake:
                pending = [w.start_due for w in self._watches.values() if not w.start_sent]
                self._wake.wait(max(0.0, min([next_beat, *pending]) - time.monotonic()))
                moment = time.monotonic()
                due = [
                    w for w in self._watches.values() if not w.start_sent and w.start_due <= moment
                ]
                beat = moment >= next_beat
                beating = list(self._watches.items()) if beat else []
            for watch in due:
                self._report_start(watch)
            if beat:  # advance even with nothing to renew, or an idle worker would spin
                next_beat = moment + HEARTBEAT_EVERY
                for key, watch in beating:
                    try:
                        watch.client.set(key, watch.worker, ex=HEARTBEAT_TTL)
                    except Exception:  # Redis gone for a moment: the outcome report will tell
                        pass

    @staticmethod
    def _report_start(watch: Watch) -> None:
        with watch.lock:
            if watch.finished or watch.start_sent:
                return
            try:
                publish(watch.client, watch.queue, watch.started)
                watch.start_sent = True
            except Exception:  # the outcome report will carry the start instead
                watch.start_due = time.monotonic() + HEARTBEAT_EVERY


MONITOR = Monitor()


def run_task(task_id: str, attempt: int, kind: str, payload: str | None, max_output: int) -> None:
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_task must run inside an RQ worker")
    client = job.connection
    queue = job.origin
    worker = job.worker_name or f"{socket.gethostname()}.{os.getpid()}"
    alive = heartbeat_key(queue, job.id)
    with client.pipeline(transaction=False) as pipe:  # one round trip to start
        pipe.exists(cancel_key(queue, job.id))
        pipe.set(alive, worker, ex=HEARTBEAT_TTL)
        cancelled = pipe.execute()[0]
    if cancelled:
        return  # cancelled before it started: the database already says so
    started_at = _now()
    started = Report(task_id, attempt, ReportKind.STARTED, worker, at=started_at)
    MONITOR.begin(
        alive, Watch(client, queue, worker, started, time.monotonic() + START_REPORT_DELAY)
    )
    try:
        value = get_handler(kind)(None if payload is None else json.loads(payload))
        report = Report(
            task_id,
            attempt,
            ReportKind.SUCCEEDED,
            worker,
            output=output_json(value, max_output),
            at=_now(),
        )
    except Exception as exc:
        report = Report(
            task_id,
            attempt,
            ReportKind.FAILED,
            worker,
            error=truncate(f"{type(exc).__name__}: {exc}", max_output),
            traceback=truncate(traceback.format_exc(), max_output),
            at=_now(),
        )
    finally:
        start_sent = MONITOR.end(alive)
    if not start_sent:
        report = Report(**{**report.__dict__, "started_at": started_at})
    publish(client, queue, report)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
