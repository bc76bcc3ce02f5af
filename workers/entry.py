"""The job RQ runs for every task: report start, run the handler, report the outcome.

It never opens the database: everything goes back through Redis, so a worker
host needs only Redis. While the handler runs, a heartbeat key is renewed; if
the process dies (SIGKILL, OOM), the key expires and the dispatcher knows.
"""

import json
import os
import socket
import threading
import traceback
from datetime import datetime, timezone
from typing import Any

from rq import get_current_job

from bridge.broker import publish
from bridge.messages import Report, cancel_key, heartbeat_key, output_json, truncate
from bridge.states import ReportKind
from workers.registry import get_handler

HEARTBEAT_TTL = 10
"""Seconds a heartbeat lives; the dispatcher declares a worker dead once it expires."""
HEARTBEAT_EVERY = 2.0


class Heartbeats:
    """One thread per process renews the heartbeat keys of the jobs running in it.

    A forking worker runs each job in a fresh child, which starts its own thread;
    a simple worker reuses one thread for all its jobs instead of one per job.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beating: dict[str, tuple[Any, str]] = {}
        self._pid: int | None = None

    def start(self, client: Any, key: str, worker: str) -> None:
        with self._lock:
            self._beating[key] = (client, worker)
            if self._pid != os.getpid():  # first job in this process (or a forked child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="bridge-heartbeat", daemon=True).start()

    def stop(self, key: str) -> None:
        """Stop renewing; the key is left to expire, after the outcome is reported."""
        with self._lock:
            self._beating.pop(key, None)

    def _run(self) -> None:
        event = threading.Event()
        while not event.wait(HEARTBEAT_EVERY):
            with self._lock:
                beating = list(self._beating.items())
            for key, (client, worker) in beating:
                try:
                    client.set(key, worker, ex=HEARTBEAT_TTL)
                except Exception:  # Redis gone for a moment: the job's own report will tell
                    pass


HEARTBEATS = Heartbeats()


def run_task(task_id: str, attempt: int, kind: str, payload: str | None, max_output: int) -> None:
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_task must run inside an RQ worker")
    client = job.connection
    queue = job.origin
    worker = job.worker_name or f"{socket.gethostname()}.{os.getpid()}"
    alive = heartbeat_key(queue, job.id)
    started = Report(task_id, attempt, ReportKind.STARTED, worker, at=_now())
    with client.pipeline(transaction=False) as pipe:  # one round trip to start
        pipe.exists(cancel_key(queue, job.id))
        pipe.set(alive, worker, ex=HEARTBEAT_TTL)
        publish(pipe, queue, started)
        cancelled = pipe.execute()[0]
    if cancelled:
        return  # cancelled before it started: the database already says so
    HEARTBEATS.start(client, alive, worker)
    try:
        try:
            value = get_handler(kind)(None if payload is None else json.loads(payload))
            output = output_json(value, max_output)
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
        else:
            report = Report(
                task_id, attempt, ReportKind.SUCCEEDED, worker, output=output, at=_now()
            )
        publish(client, queue, report)
    finally:
        HEARTBEATS.stop(alive)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
