"""All Redis and RQ: the only module (with ``workers/``) that talks to Redis.

Redis is transport only. Jobs go out through an RQ queue (JSON-serialized);
reports come back on a Redis stream read through a consumer group, so a report
stays pending until the dispatcher acknowledges it after its commit.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.job import Job
from rq.serializers import JSONSerializer

from bridge.errors import BridgeError
from bridge.messages import (
    JOB_FUNCTION,
    Dispatch,
    Report,
    ReportError,
    cancel_key,
    heartbeat_key,
    reports_key,
)
from bridge.recovery import JobState, parse_time
from bridge.settings import redact_text, redact_url

log = logging.getLogger(__name__)

GROUP = "dispatchers"
"""The consumer group of the report stream."""
RESULT_TTL = 600
"""Seconds RQ keeps a finished job; the report already carries what matters."""
RETRIES = 20
RETRY_CAP = 1.5
"""A resilient client retries a command for about 25 s: long enough to ride out
a Redis restart, short enough that a Redis that is really gone shows up."""
NO_TIMEOUT = -1
"""RQ's "never time out": a task without ``timeout`` runs as long as it needs."""


class BrokerError(BridgeError):
    """Redis cannot be used; the message names the URL (password hidden)."""


def connect(url: str, *, check: bool = True, resilient: bool = False) -> redis.Redis:
    """A Redis client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``).

    ``check`` fails at once, in one line, if Redis does not answer now. A
    ``resilient`` client (for the long-running services) then retries commands
    through a Redis restart instead of letting the process die.
    """
    try:
        options: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
        if check:
            probe = redis.Redis.from_url(url, **options)
            try:
                probe.ping()
            except RedisError as exc:
                raise BrokerError(
                    f"cannot reach Redis at {redact_url(url)}: {redact_text(_first_line(exc), url)}"
                ) from None
            finally:
                probe.close()
        if resilient:
            options["retry"] = Retry(ExponentialBackoff(cap=RETRY_CAP, base=0.05), RETRIES)
            options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise BrokerError(
            f"not a Redis URL: {redact_url(url)} ({redact_text(str(exc), url)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class Incoming:
    message_id: bytes
    report: Report | None
    """None for a wake-up nudge or an undecodable message (acknowledged and dropped)."""


class Broker:
    def __init__(self, client: redis.Redis, queue: str, *, max_output: int = 1024 * 1024) -> None:
        self.client = client
        self.queue_name = queue
        self.queue = Queue(queue, connection=client, serializer=JSONSerializer)
        self.stream = reports_key(queue)
        self.max_output = max_output
        self._pending_first = True

    # ------------------------------------------------------------------ jobs out

    def enqueue(self, jobs: Sequence[Dispatch]) -> None:
        """Enqueue jobs in one round trip. Only called after their ``queued`` commit."""
        self.settle((), jobs)

    def settle(self, acknowledged: Sequence[bytes], jobs: Sequence[Dispatch]) -> None:
        """After a tick's commit: acknowledge its reports and enqueue its jobs, together,
        in one round trip (MULTI/EXEC)."""
        if not acknowledged and not jobs:
            return
        with self.client.pipeline() as pipe:
            if acknowledged:
                pipe.xack(self.stream, GROUP, *acknowledged)
                pipe.xdel(self.stream, *acknowledged)
            if jobs:
                self.queue.enqueue_many([self._job_data(job) for job in jobs], pipeline=pipe)
            pipe.execute()

    def _job_data(self, job: Dispatch) -> Any:
        return Queue.prepare_data(
            JOB_FUNCTION,
            kwargs={
                "task_id": job.task_id,
                "attempt": job.attempt,
                "kind": job.kind,
                "payload": job.payload,
                "max_output": self.max_output,
            },
            job_id=job.job_id,
            timeout=job.timeout or NO_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=24 * 3600,
            description=f"bridge task {job.task_id!r} attempt {job.attempt}",
        )

    def job_states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """What Redis knows of each job, in one round trip (``recovery.judge`` decides)."""
        if not job_ids:
            return {}
        intermediate = self.queue.intermediate_queue_key
        # MULTI/EXEC: a worker picking the job up between two reads must not make it
        # look like a queued job that is in neither list.
        with self.client.pipeline(transaction=True) as pipe:
            for job_id in job_ids:
                pipe.hmget(Job.key_for(job_id), "status", "started_at")
                pipe.lpos(self.queue.key, job_id)
                pipe.lpos(intermediate, job_id)
                pipe.exists(heartbeat_key(self.queue_name, job_id))
            answers = pipe.execute()
        states = {}
        for index, job_id in enumerate(job_ids):
            (status, started), in_queue, picked, alive = answers[index * 4 : index * 4 + 4]
            states[job_id] = JobState(
                exists=status is not None,
                status=status.decode() if status else None,
                started_at=parse_time(started.decode()) if started else None,
                waiting=in_queue is not None,
                picked=picked is not None,
                heartbeat=bool(alive),
            )
        return states

    def withdraw(self, job_ids: Sequence[str]) -> None:
        """Take superseded jobs out of the queue so an old attempt does not run too."""
        if job_ids:
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.lrem(self.queue.key, 0, job_id)
                    pipe.lrem(self.queue.intermediate_queue_key, 0, job_id)
                pipe.execute()

    def run_id(self) -> str:
        """Redis's run id: a new one means Redis restarted and may have lost everything."""
        return str(self.client.info("server").get("run_id", ""))

    def cancel(self, job_id: str, *, running: bool) -> str:
        """Withdraw a job: drop it from the queue, or ask its worker to stop it."""
        self.client.set(cancel_key(self.queue_name, job_id), "1", ex=24 * 3600)
        removed = self.queue.remove(job_id)
        if running:
            try:
                send_stop_job_command(self.client, job_id, serializer=JSONSerializer)
                return "stop requested from its worker"
            except Exception as exc:  # not executing yet, or the worker cannot stop jobs
                reason = _first_line(exc)
                return f"could not stop the running job ({reason}); its result will be ignored"
        return "removed from the queue" if removed else "job was not in the queue"

    def purge(self) -> int:
        """Drop every queued job (``bridge clean``)."""
        return int(self.queue.empty())

    # ------------------------------------------------------------------ reports in

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_reports(self, consumer: str, *, block_ms: int, count: int = 1000) -> list[Incoming]:
        """Reports not yet acknowledged, then new ones (blocking up to ``block_ms``).

        After a restart the first read returns what a crashed dispatcher read but
        never acknowledged; fencing makes applying it twice harmless.
        """
        try:
            return self._read(consumer, block_ms=block_ms, count=count)
        except ResponseError as exc:
            # NOGROUP: Redis lost the stream (flushed, restarted). UNBLOCKED: it was
            # flushed while we waited on it. Either way: recreate it, read from the start.
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            self.ensure_group()
            self._pending_first = True
            return self._read(consumer, block_ms=block_ms, count=count)

    def _read(self, consumer: str, *, block_ms: int, count: int) -> list[Incoming]:
        if self._pending_first:
            entries = self.client.xreadgroup(GROUP, consumer, {self.stream: "0"}, count=count)
            messages = entries[0][1] if entries else []
            if len(messages) < count:
                self._pending_first = False
            if messages:
                return [self._decode(mid, fields) for mid, fields in messages]
        entries = self.client.xreadgroup(
            GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        messages = entries[0][1] if entries else []
        return [self._decode(mid, fields) for mid, fields in messages]

    def _decode(self, message_id: bytes, fields: dict) -> Incoming:
        if not fields or b"nudge" in fields:
            return Incoming(message_id, None)
        try:
            return Incoming(message_id, Report.decode(fields))
        except ReportError as exc:
            log.warning("dropping malformed report %s: %s", message_id, exc)
            return Incoming(message_id, None)

    def ack(self, message_ids: Sequence[bytes]) -> None:
        """Acknowledge and delete applied reports, so the stream stays short."""
        self.settle(message_ids, ())

    def nudge(self) -> None:
        """Wake a dispatcher blocked on the stream (new tasks were added)."""
        self.client.xadd(self.stream, {"nudge": "1"})

    # ---- status

    def queue_depth(self) -> int:
        """Jobs waiting in the RQ queue (not yet taken by a worker)."""
        try:
            return int(self.queue.count)
        except RedisError as exc:
            raise BrokerError(f"Redis error: {_first_line(exc)}") from None

    def workers(self) -> list["WorkerInfo"]:
        """The RQ workers registered on this queue, alive as far as RQ knows (a worker
        that stopped heart-beating drops out when its registration key expires)."""
        try:
            found = Worker.all(queue=self.queue)
            infos = []
            for worker in sorted(found, key=lambda w: w.name):
                beat = worker.last_heartbeat
                infos.append(
                    WorkerInfo(
                        name=worker.name,
                        state=str(getattr(worker.get_state(), "value", worker.get_state())),
                        current_job=worker.get_current_job_id(),
                        hostname=worker.hostname,
                        pid=worker.pid,
                        last_heartbeat=None if beat is None else beat.isoformat(),
                    )
                )
            return infos
        except RedisError as exc:
            raise BrokerError(f"Redis error: {_first_line(exc)}") from None


@dataclass(frozen=True)
class WorkerInfo:
    """One RQ worker as ``bridge status`` shows it."""

    name: str
    state: str
    """RQ's word: ``idle``, ``busy``, ``suspended``, ``started``..."""
    current_job: str | None
    hostname: str | None
    pid: int | None
    last_heartbeat: str | None
    """ISO time of its last heartbeat to RQ."""


TRANSPORT_ERRORS: tuple[type[Exception], ...] = (BrokerError, RedisError, OSError)
"""What a broker call may raise when Redis cannot be used; callers outside the broker
catch this instead of importing redis (one day it is ``BrokerError`` alone)."""


def publish(client: redis.Redis, queue: str, report: Report) -> None:
    """Append a worker's report to the stream (the worker side of the channel)."""
    client.xadd(reports_key(queue), report.encode())


def nudge_quietly(url: str, queue: str) -> None:
    """Best-effort wake-up of a dispatcher (after ``bridge add``); never fails, never waits long."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.3)
        Broker(client, queue).nudge()
        client.close()
    except (RedisError, ValueError, OSError):
        pass
