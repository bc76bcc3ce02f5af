"""The worker's side of Redis: bridge's own RQ job and worker classes.

A bridge worker runs one function, ``messages.JOB_FUNCTION``, and nothing else.
Any other job on its queues (a function named by whoever can write to Redis, a
job with callbacks or webhooks, one whose data is not bridge's JSON) is refused
before a line of it runs: logged, and marked failed in RQ's registries so it
shows in ``rq info`` and dashboards.

The process that takes a job (the forking worker's parent, which the handler
cannot starve) also keeps the job's heartbeat and sends its ``started`` report.
Before it starts a job it checks, atomically with the first heartbeat, that the
attempt has not been superseded; at every heartbeat it checks again, and stops
the work horse of an attempt that was superseded or cancelled meanwhile. A
``SimpleWorker`` runs the handler in the same process: a handler that holds the
GIL longer than ``HEARTBEAT_TTL`` starves its heartbeats there, and it cannot be
stopped; use the forking worker (the default) where that matters.
"""

import logging
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from rq import SimpleWorker, Worker
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import import_attribute
from rq.utils import now as rq_now

from bridge.broker.client import first_line
from bridge.broker.keys import Keys
from bridge.defaults import (
    FAILURE_TTL,
    HEARTBEAT_EVERY,
    HEARTBEAT_TTL,
    MAX_JOB_DATA,
    START_REPORT_DELAY,
    WORKER_RESTART_AFTER,
)
from bridge.messages import JOB_FUNCTION, Dispatch, MessageError, Report
from bridge.states import ReportKind

log = logging.getLogger("bridge.worker")

_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""
"""Start an attempt only if it is not fenced off; the first heartbeat goes with the
check, so the dispatcher sees either the mark or a live heartbeat, never neither."""


class RefusedJob(RuntimeError):
    """A job that is not bridge's: it is never run."""


def refusal(job: Job) -> str | None:
    """Why ``job`` must not run, or None when it is one of bridge's own jobs."""
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception as exc:  # pickle, garbage: not JSON bridge wrote
        return f"its data cannot be read as a bridge job ({first_line(exc)})"
    if func_name != JOB_FUNCTION:
        return f"it names {func_name!r}, not bridge's entry point"
    if instance is not None or args:
        return "it has an instance or positional arguments"
    names = (
        job._success_callback_name,
        job._failure_callback_name,
        job._stopped_callback_name,
    )
    if any(names):
        return "it has callbacks"
    if getattr(job, "webhooks", None):
        return "it has webhooks"
    if job._dependency_ids:  # as loaded with the record: no round trip to Redis
        return "it has RQ dependencies"
    try:
        dispatch = Dispatch.decode(kwargs)
    except MessageError as exc:
        return str(exc)
    if dispatch.job_id != job.id or dispatch.queue != job.origin:
        return "its fields do not match its job id or queue"
    return None


class BridgeJob(Job):
    """An RQ job that can only ever call bridge's entry point.

    The worker refuses any other job before it runs; these overrides make sure no
    other path (RQ's callbacks, webhooks, an import named by the job) runs code
    either, should RQ reach for it anyway.
    """

    @property
    def func(self) -> Any:
        if self.func_name != JOB_FUNCTION or self.instance is not None:
            raise RefusedJob(f"refusing to run {self.func_name!r}: not bridge's entry point")
        return import_attribute(JOB_FUNCTION)

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None

    def restore(self, raw_data: Any) -> Any:
        """RQ's restore, after checking that the record's data inflates to at most
        ``MAX_JOB_DATA`` bytes: RQ would inflate any size whole, so a small hostile
        record could take the worker's memory before it is even looked at."""
        data = raw_data.get(b"data") if isinstance(raw_data, dict) else None
        if isinstance(data, bytes):
            inflate = zlib.decompressobj()
            try:
                inflated = len(inflate.decompress(data, MAX_JOB_DATA + 1))
            except zlib.error:
                inflated = 0  # stored uncompressed: RQ takes it as it is
            if inflated > MAX_JOB_DATA:
                raise RefusedJob(f"its data inflates to more than {MAX_JOB_DATA} bytes")
        return super().restore(raw_data)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass
class Watched:
    """The job a worker process is running, as its watcher sees it."""

    dispatch: Dispatch
    holder: str
    started: Report
    stop_job: Callable[[], None]
    start_due: float
    next_beat: float
    start_sent: bool = False
    fenced: bool = False


class Watcher:
    """One thread per worker process: heartbeats and the delayed start report of the job
    the process is running, from the process that took it (not the work horse).

    It lives as long as the worker, so a job costs no thread start; it has a Redis
    client of its own, so nothing it holds is ever inherited half-used by a fork.
    """

    _BEAT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool  # same server, socket kind, TLS and password
        self.client = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class, **pool.connection_kwargs
            )
        )
        self._beat = self.client.register_script(self._BEAT)
        self._wake = threading.Condition()
        self._current: Watched | None = None
        self._thread: threading.Thread | None = None
        self._until: float | None = None
        """When the thread wakes next on its own (None: only when woken)."""

    def begin(self, watched: Watched) -> None:
        """Watch ``watched`` from now on. The thread is woken only when it would otherwise
        sleep past the job's first due time: waking it for every job (and again at its
        end) cost short jobs a thread switch each, and the GIL hand-over with it."""
        with self._wake:
            self._current = watched
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bridge-watch", daemon=True)
                self._thread.start()
            if self._until is None or self._until > watched.start_due:
                self._wake.notify()

    def end(self) -> None:
        """The job ended: stop watching it. A start report or heartbeat being sent right
        now finishes first, so nothing about this job is sent after ``end`` returns.
        The thread is not woken: at its next due time it finds no job, or the next one."""
        with self._wake:
            self._current = None

    def drop(self, dispatch: Dispatch) -> None:
        """Delete the heartbeat now (the job's process died without reporting), so the
        dispatcher judges it at once instead of after the heartbeat TTL."""
        try:
            self.client.delete(Keys(dispatch.namespace).alive(dispatch.job_id))
        except redis.RedisError as exc:  # Redis gone: the key expires on its own
            log.debug("heartbeat of %s not dropped: %s", dispatch.job_id, exc)

    def _run(self) -> None:
        with self._wake:
            while True:
                watched = self._current
                if watched is None:
                    self._until = None
                    self._wake.wait()
                    continue
                moment = time.monotonic()
                due = watched.next_beat if watched.start_sent else watched.start_due
                if moment < due:
                    self._until = due
                    self._wake.wait(due - moment)
                    continue
                # Sent while holding the lock: ``end`` waits for it, so a report or a
                # beat never goes out for a job that has ended.
                if not watched.start_sent:
                    watched.start_sent = True
                    try:
                        publish(self.client, watched.dispatch.namespace, watched.started)
                    except redis.RedisError as exc:  # the outcome carries the start too
                        log.debug("start report not sent: %s", exc)
                    continue
                watched.next_beat = moment + HEARTBEAT_EVERY
                keys = Keys(watched.dispatch.namespace)
                try:
                    alive = self._beat(
                        keys=[
                            keys.fence(watched.dispatch.job_id),
                            keys.alive(watched.dispatch.job_id),
                        ],
                        args=[watched.holder, HEARTBEAT_TTL],
                    )
                except redis.RedisError as exc:  # Redis gone for a moment: try next beat
                    log.debug("heartbeat failed: %s", exc)
                    continue
                if not alive and not watched.fenced:
                    watched.fenced = True
                    watched.stop_job()


class _BridgeWorkerMixin:
    """What bridge adds to RQ's workers: refusal, fencing, heartbeats from here."""

    mode = "fork"

    # Attributes RQ's worker provides.
    connection: redis.Redis
    name: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = JSONSerializer  # bridge jobs are JSON, whatever RQ was told
        kwargs["job_class"] = BridgeJob
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._admit = self.connection.register_script(_ADMIT)
        self._watcher = Watcher(self.connection)
        self._watched: Watched | None = None

    def run_maintenance_tasks(self) -> None:
        """RQ's housekeeping (registries, the intermediate list) reads every job record it
        finds; one that anybody wrote badly must not stop the worker: log it and go on."""
        try:
            super().run_maintenance_tasks()  # type: ignore[misc]
        except redis.RedisError:
            raise
        except Exception as exc:
            log.warning("RQ housekeeping skipped a record it cannot read: %s", first_line(exc))

    def clean_registries(self) -> None:
        try:
            super().clean_registries()  # type: ignore[misc]
        except redis.RedisError:
            raise
        except Exception as exc:
            log.warning("RQ registry cleaning skipped a record it cannot read: %s", first_line(exc))
            self.last_cleaned_at = rq_now()  # try again at the next interval, not at once

    def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any) -> Any:
        """RQ's dequeue, but a job that cannot even be loaded is refused, not fatal."""
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(*args, **kwargs)  # type: ignore[misc]
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                queue = getattr(exc, "queue", None)
                if job_id is None or queue is None:
                    raise
                self._refuse_id(job_id, queue, f"it cannot be loaded ({first_line(exc)})")

    def execute_job(self, job: Job, queue: Queue) -> None:
        reason = refusal(job)
        if reason is not None:
            self._refuse_id(job.id, queue, reason, job=job)
            return
        dispatch = Dispatch.decode(job.kwargs)
        keys = Keys(dispatch.namespace)
        holder = f"{self.mode}:{self.name}"
        if not self._admit(
            keys=[keys.fence(job.id), keys.alive(job.id)], args=[holder, HEARTBEAT_TTL]
        ):
            log.info("skipping job %s: its attempt was superseded or cancelled", job.id)
            with self.connection.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 0, job.id)
                pipe.delete(job.key)
                pipe.execute()
            return
        started = Report(
            dispatch.task_id,
            dispatch.attempt,
            ReportKind.STARTED,
            dispatch.job_id,
            self.name,
            at=utc_now(),
        )
        moment = time.monotonic()
        self._watched = Watched(
            dispatch,
            holder,
            started,
            lambda: self._stop(job),
            start_due=moment + START_REPORT_DELAY,
            next_beat=moment + HEARTBEAT_EVERY,
        )
        try:
            if self.mode == "simple":
                self._watcher.begin(self._watched)
            super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            self._watcher.end()
            self._watched = None

    def _stop(self, job: Job) -> None:
        log.warning("job %s was superseded or cancelled while running", job.id)

    def _refuse_id(self, job_id: str, queue: Queue, reason: str, job: Job | None = None) -> None:
        """Log, mark failed in RQ's failed registry, and take it out of the worker's hands;
        nothing of the job runs (no callback, no webhook, no import)."""
        log.warning("refused job %s on queue %r: %s", job_id, queue.name, reason)
        registry = FailedJobRegistry(queue.name, connection=self.connection)
        key = Job.key_for(job_id)
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 0, job_id)
            pipe.hset(
                key,
                mapping={
                    "status": JobStatus.FAILED.value,
                    "exc_info": f"refused by bridge: {reason}",
                    "bridge_refused": reason[:200],
                    "ended_at": utc_now().replace(" ", "T") + "Z",
                },
            )
            pipe.expire(key, FAILURE_TTL)
            pipe.zadd(registry.key, {job_id: time.time() + FAILURE_TTL})
            pipe.execute()


class BridgeWorker(_BridgeWorkerMixin, Worker):
    """RQ's forking worker: each job in its own work horse, watched from this process."""

    mode = "fork"

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        super().fork_work_horse(job, queue)
        # Only the parent returns here: the child runs the job and exits inside.
        if self._watched is not None:
            self._watcher.begin(self._watched)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """The work horse died without reporting: drop its heartbeat now, so the
        dispatcher judges the attempt at once."""
        if self._watched is not None:
            self._watcher.drop(self._watched.dispatch)
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def _stop(self, job: Job) -> None:
        """Kill the work horse running ``job``, and nothing else: the watch thread may see
        the fence just as the horse ends, when RQ has already cleared its pid (a kill of
        pid 0's group would take this worker down with it)."""
        super()._stop(job)
        pid = self._horse_pid
        if pid <= 0 or self.get_current_job_id() != job.id:
            return
        try:
            group = os.getpgid(pid)
            if group == os.getpgrp():
                return
            self._stopped_job_id = job.id
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended on its own


class BridgeSimpleWorker(_BridgeWorkerMixin, SimpleWorker):
    """RQ's in-process worker: faster, but a running job can neither be stopped nor
    keep its heartbeat while its handler holds the GIL."""

    mode = "simple"

    def _stop(self, job: Job) -> None:
        log.warning(
            "job %s was superseded or cancelled while running; a simple worker cannot stop"
            " it: it runs to its end and its result is ignored",
            job.id,
        )


WORKER_CLASSES: dict[str, type[BridgeWorker] | type[BridgeSimpleWorker]] = {
    "fork": BridgeWorker,
    "simple": BridgeSimpleWorker,
}


def serve_jobs(
    client: redis.Redis,
    queues: list[str],
    *,
    mode: str,
    name: str | None = None,
    burst: bool = False,
    logging_level: str = "INFO",
    max_jobs: int | None = None,
) -> bool:
    """Run a bridge worker until stopped (SIGTERM/SIGINT: warm shutdown, the current job
    finishes). Returns whether any job ran.

    When Redis goes away for longer than the client's retries, start over, as RQ's
    own loop would for a dequeue; the dispatcher re-sends what was lost.
    """
    worker_class = WORKER_CLASSES[mode]
    while True:
        worker = worker_class(queues, connection=client, name=name)
        try:
            return worker.work(burst=burst, logging_level=logging_level, max_jobs=max_jobs)
        except redis.RedisError as exc:
            if getattr(worker, "_shutdown_requested_date", None) is not None:
                return True  # asked to stop: do not start over while Redis is away
            log.warning(
                "lost Redis (%s); starting the worker again in %.0fs",
                first_line(exc),
                WORKER_RESTART_AFTER,
            )
            time.sleep(WORKER_RESTART_AFTER)
            try:
                worker.register_death()  # free the name for the new registration
            except redis.RedisError:
                pass


# ---------------------------------------------------------------------- in the job


def current_job() -> tuple[redis.Redis, Dispatch, str]:
    """Inside a job: the Redis client, the attempt and the worker's name."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("bridge's entry point must run inside a bridge worker")
    dispatch = Dispatch.decode(job.kwargs)
    worker = job.worker_name or f"{socket.gethostname()}.{os.getpid()}"
    return job.connection, dispatch, worker


def publish(client: redis.Redis, namespace: str, report: Report) -> None:
    """Append a worker's report to its database's stream."""
    client.xadd(Keys(namespace).reports, report.encode())


def publish_many(client: redis.Redis, namespace: str, reports: Sequence[Report]) -> None:
    """Append reports (a handler's progress and log lines) in one round trip."""
    if not reports:
        return
    with client.pipeline(transaction=False) as pipe:
        for report in reports:
            pipe.xadd(Keys(namespace).reports, report.encode())
        pipe.execute()


def publish_outcome(
    client: redis.Redis, report: Report, dispatch: Dispatch, notes: Sequence[Report] = ()
) -> None:
    """The job's outcome, and its heartbeat dropped, in one round trip: the report is in
    the stream before the heartbeat goes, so the dispatcher never sees neither. The
    handler's last progress and log lines (``notes``) go just before the outcome."""
    keys = Keys(dispatch.namespace)
    with client.pipeline() as pipe:
        for note in notes:
            pipe.xadd(keys.reports, note.encode())
        pipe.xadd(keys.reports, report.encode())
        pipe.delete(keys.alive(dispatch.job_id))
        pipe.execute()
