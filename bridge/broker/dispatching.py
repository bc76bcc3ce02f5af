"""The dispatcher's side of Redis: jobs out, job states, fencing marks, reports in.

Redis is transport only. Jobs go out through RQ queues (JSON-serialized);
reports come back on a Redis stream read through a consumer group, so a report
stays pending until the dispatcher acknowledges it after its commit. Every
method raises ``BrokerUnavailable`` (never a redis-py error) when Redis fails.
"""

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import RedisError, ResponseError
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.job import Job
from rq.serializers import JSONSerializer

from bridge.broker.client import BrokerError, first_line, translated
from bridge.broker.keys import Keys, queue_owner
from bridge.defaults import FAILURE_TTL, FENCE_TTL, RESULT_TTL
from bridge.messages import JOB_FUNCTION, Dispatch, Report, ReportError
from bridge.recovery import JobState, parse_time

log = logging.getLogger(__name__)

GROUP = "dispatchers"
"""The consumer group of the report stream."""
NO_TIMEOUT = -1
"""RQ's "never time out": a task without ``timeout`` runs as long as it needs."""
OWNER_TTL = 30
"""Seconds a dispatcher's claim on a queue lasts unless renewed."""

_SUPERSEDE = """
local alive = redis.call('EXISTS', KEYS[2])
if alive == 1 and ARGV[4] ~= '1' then return 1 end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
if alive == 1 then return 1 end
if ARGV[3] == '1' then
  redis.call('LREM', KEYS[4], 0, ARGV[1])
  redis.call('LREM', KEYS[5], 0, ARGV[1])
  redis.call('DEL', KEYS[3])
end
return 0
"""
"""Fence one attempt off, unless a worker is running it right now (its heartbeat is
alive: returns 1, and the attempt is left untouched, so it runs on and reports);
with ``force`` (cancel, clean, a timeout) a running attempt is fenced too, and its
worker stops it. A fenced attempt that no worker runs is withdrawn: out of the
queue, out of a worker's hands, job record deleted. Admission is a script too, so a
worker taking the job at this moment either finds the mark (and drops the job) or has
set its heartbeat first (and the job is left alone)."""

_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and owner ~= ARGV[3] then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
"""Claim an owner key (a queue's database, a namespace's dispatcher) for ARGV[1], or
return the other live owner; ARGV[3], when not empty, is an owner whose claim is taken
over (a predecessor)."""


@dataclass(frozen=True)
class Incoming:
    message_id: bytes
    report: Report | None
    """None for a wake-up nudge or an undecodable message (acknowledged and dropped)."""


@dataclass(frozen=True)
class Withdrawal:
    job_id: str
    queue: str


@dataclass(frozen=True)
class CancelOutcome:
    stopped: bool
    """True when the job will not run to its end (removed, or its worker stops it)."""
    message: str


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
    queues: list[str] = field(default_factory=list)
    """The queues it listens on, in its order."""


class Broker:
    """One database's view of Redis: its namespace, its queues, its report stream."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.keys = Keys(namespace)
        self._queues: dict[str, Queue] = {}
        self._pending_first = True
        self._supersede = client.register_script(_SUPERSEDE)
        self._claim = client.register_script(_CLAIM)

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.client, serializer=JSONSerializer)
        return self._queues[name]

    # ------------------------------------------------------------------ queues

    @translated
    def claim_queues(self, names: Iterable[str]) -> None:
        """Serve these RQ queues for this database, or refuse: one database per queue.

        Namespacing already keeps two databases apart; refusing a shared queue keeps
        one database's backlog from starving another's and makes the mistake visible.
        """
        for name in names:
            owner = self._claim(keys=[queue_owner(name)], args=[self.namespace, OWNER_TTL, ""])
            if owner:
                raise BrokerError(
                    f"queue {name!r} is already served by the dispatcher of another database"
                    f" (namespace {owner.decode() if isinstance(owner, bytes) else owner});"
                    " give this database its own queue (--queue / BRIDGE_QUEUE)"
                )

    @translated
    def claim_namespace(self, holder: str, ttl: float, take_from: str = "") -> str | None:
        """Mark ``holder`` as the dispatcher of this namespace for ``ttl`` seconds; returns
        the name of another live holder instead, if there is one (other than
        ``take_from``, whose claim is taken over)."""
        owner = self._claim(keys=[self.keys.dispatcher], args=[holder, max(1, int(ttl)), take_from])
        if owner:
            return owner.decode() if isinstance(owner, bytes) else str(owner)
        return None

    @translated
    def release_namespace(self, holder: str) -> None:
        if self.client.get(self.keys.dispatcher) == holder.encode():
            self.client.delete(self.keys.dispatcher)

    @translated
    def release_queues(self, names: Iterable[str]) -> None:
        for name in names:
            key = queue_owner(name)
            if self.client.get(key) == self.namespace.encode():
                self.client.delete(key)

    # ------------------------------------------------------------------ jobs out

    def enqueue(self, jobs: Sequence[Dispatch]) -> None:
        """Enqueue jobs in one round trip. Only called after their ``queued`` commit."""
        self.settle((), jobs)

    @translated
    def settle(self, acknowledged: Sequence[bytes], jobs: Sequence[Dispatch]) -> None:
        """After a tick's commit: acknowledge its reports and enqueue its jobs, together,
        in one round trip (MULTI/EXEC)."""
        if not acknowledged and not jobs:
            return
        with self.client.pipeline() as pipe:
            if acknowledged:
                pipe.xack(self.keys.reports, GROUP, *acknowledged)
                pipe.xdel(self.keys.reports, *acknowledged)
            by_queue: dict[str, list[Dispatch]] = {}
            for job in jobs:
                by_queue.setdefault(job.queue, []).append(job)
            for name, group in by_queue.items():
                self.queue(name).enqueue_many([_job_data(job) for job in group], pipeline=pipe)
            pipe.execute()

    @translated
    def job_states(self, jobs: Sequence[tuple[str, str]]) -> dict[str, JobState]:
        """What Redis knows of each ``(job id, queue)``, in one round trip
        (``recovery.judge`` decides what it means)."""
        if not jobs:
            return {}
        # MULTI/EXEC: a worker picking the job up between two reads must not make it
        # look like a queued job that is in neither list.
        with self.client.pipeline(transaction=True) as pipe:
            for job_id, queue in jobs:
                rq_queue = self.queue(queue)
                pipe.hmget(
                    Job.key_for(job_id), "status", "started_at", "ended_at", "bridge_refused"
                )
                pipe.lpos(rq_queue.key, job_id)
                pipe.lpos(rq_queue.intermediate_queue_key, job_id)
                pipe.exists(self.keys.alive(job_id))
            answers = pipe.execute()
        states = {}
        for index, (job_id, _queue) in enumerate(jobs):
            (status, started, ended, refused), in_queue, picked, alive = answers[
                index * 4 : index * 4 + 4
            ]
            states[job_id] = JobState(
                exists=status is not None,
                status=status.decode() if status else None,
                started_at=parse_time(started.decode()) if started else None,
                ended_at=parse_time(ended.decode()) if ended else None,
                waiting=in_queue is not None,
                picked=picked is not None,
                heartbeat=bool(alive),
                refused=refused is not None,
            )
        return states

    @translated
    def supersede(
        self, jobs: Sequence[Withdrawal], *, withdraw: bool = True, force: bool = False
    ) -> set[str]:
        """Fence attempts off before their successors are sent (or their failure recorded).

        Returns the job ids that a worker is running right now (heartbeat alive).
        Without ``force`` those are left untouched, not superseded: the caller leaves
        them be, and their worker will report. With ``force`` they are fenced as well,
        and their worker stops them (forking worker) at its next heartbeat. With
        ``withdraw``, a fenced job that no worker runs is taken out of its queue and
        its record deleted.
        """
        if not jobs:
            return set()
        with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                rq_queue = self.queue(job.queue)
                self._supersede(
                    keys=[
                        self.keys.fence(job.job_id),
                        self.keys.alive(job.job_id),
                        Job.key_for(job.job_id),
                        rq_queue.key,
                        rq_queue.intermediate_queue_key,
                    ],
                    args=[job.job_id, FENCE_TTL, "1" if withdraw else "0", "1" if force else "0"],
                    client=pipe,
                )
            answers = pipe.execute()
        return {job.job_id for job, alive in zip(jobs, answers, strict=True) if alive}

    @translated
    def run_id(self) -> str:
        """Redis's run id: a new one means Redis restarted and may have lost everything."""
        return str(self.client.info("server").get("run_id", ""))

    @translated
    def eviction_risk(self) -> str | None:
        """Why Redis may drop bridge's keys on its own, or None.

        With a memory limit and any policy but ``noeviction``, Redis evicts keys when
        full: a fence mark or a pending report could vanish. Nothing is lost for good
        (the database re-sends what it cannot see), but fencing relies on the marks.
        """
        memory = self.client.info("memory")
        limit = int(memory.get("maxmemory", 0) or 0)
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if limit and policy != "noeviction":
            return (
                f"Redis may evict keys (maxmemory {limit} bytes, maxmemory-policy {policy}):"
                " set maxmemory-policy noeviction, or fence marks and reports can vanish"
            )
        return None

    @translated
    def cancel(self, job_id: str, queue: str) -> CancelOutcome:
        """Stop an attempt the database has just cancelled, as far as Redis allows.

        Decided from what Redis says now, not from the database's last view: a job
        still waiting is withdrawn; a running one on a forking worker is stopped (its
        worker kills the work horse at once, or at its next heartbeat); on a simple
        worker nothing can stop it, so it runs to its end and its result is ignored.
        """
        running = self.supersede([Withdrawal(job_id, queue)], force=True)
        if job_id not in running:
            return CancelOutcome(True, "its job was removed from the queue before it started")
        holder = self.client.get(self.keys.alive(job_id))
        mode, _, worker = (holder or b"").decode("utf-8", "replace").partition(":")
        if mode == "simple":
            return CancelOutcome(
                False,
                f"its job is running on simple worker {worker or '?'}, which cannot stop it:"
                " it runs to its end and its result will be ignored",
            )
        try:
            send_stop_job_command(self.client, job_id, serializer=JSONSerializer)
        except Exception as exc:  # the worker will see the mark at its next heartbeat
            log.debug("stop command for %s not delivered: %s", job_id, first_line(exc))
        return CancelOutcome(True, f"its worker {worker or '?'} is stopping the running job")

    @translated
    def queued_jobs(self, queue: str) -> int:
        return int(self.client.llen(self.queue(queue).key))

    @translated
    def ping(self) -> None:
        """Raise ``BrokerUnavailable`` unless Redis answers now (``/healthz``)."""
        self.client.ping()

    # ------------------------------------------------------------------ reports in

    @translated
    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.keys.reports, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @translated
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
        stream = self.keys.reports
        if self._pending_first:
            entries = self.client.xreadgroup(GROUP, consumer, {stream: "0"}, count=count)
            messages = entries[0][1] if entries else []
            if len(messages) < count:
                self._pending_first = False
            if messages:
                return [self._decode(mid, fields) for mid, fields in messages]
        # No BLOCK at all for a look without waiting: Redis checks blocked clients'
        # timeouts at its own tick (``hz``, 100 ms by default), so "BLOCK 1" can cost 100 ms.
        entries = self.client.xreadgroup(
            GROUP, consumer, {stream: ">"}, count=count, block=block_ms if block_ms > 0 else None
        )
        messages = entries[0][1] if entries else []
        return [self._decode(mid, fields) for mid, fields in messages]

    @translated
    def last_report_id(self) -> bytes | None:
        """The id of the newest entry in the report stream; None when it is empty."""
        entries = self.client.xrevrange(self.keys.reports, count=1)
        return entries[0][0] if entries else None

    def _decode(self, message_id: bytes, fields: dict) -> Incoming:
        if not fields or b"nudge" in fields:
            return Incoming(message_id, None)
        try:
            return Incoming(message_id, Report.decode(fields))
        except ReportError as exc:
            log.warning("dropping malformed report %s: %s", message_id, exc)
            return Incoming(message_id, None)

    def reread_pending(self) -> None:
        """Read the unacknowledged reports again first: a commit that failed left them
        pending, and ``>`` would never return them."""
        self._pending_first = True

    @translated
    def nudge(self) -> None:
        """Wake a dispatcher blocked on the stream (new tasks were added)."""
        self.client.xadd(self.keys.reports, {"nudge": "1"})

    # ---- status

    @translated
    def workers(self, queues: str | Iterable[str]) -> list["WorkerInfo"]:
        """The RQ workers registered on any of ``queues``, each once, alive as far as RQ
        knows (a worker that stopped heart-beating drops out when its registration key
        expires)."""
        found: dict[str, Worker] = {}
        for name in [queues] if isinstance(queues, str) else sorted(set(queues)):
            for worker in Worker.all(queue=self.queue(name)):
                found.setdefault(worker.name, worker)
        infos = []
        for worker in sorted(found.values(), key=lambda w: w.name):
            state = worker.get_state()
            beat = worker.last_heartbeat
            infos.append(
                WorkerInfo(
                    name=worker.name,
                    state=str(getattr(state, "value", state)),
                    current_job=worker.get_current_job_id(),
                    hostname=worker.hostname,
                    pid=worker.pid,
                    last_heartbeat=None if beat is None else beat.isoformat(),
                    queues=worker.queue_names(),
                )
            )
        return infos

    @translated
    def served_queues(self) -> list[str]:
        """The queues a dispatcher of this database serves right now (it claims each queue
        it sends a job to, ``claim_queues``). Read from RQ's own set of queues, so the
        cost follows the number of queues, never the number of keys in Redis."""
        prefix = Queue.redis_queue_namespace_prefix
        names = sorted(
            key.decode()[len(prefix) :]
            for key in self.client.smembers(Queue.redis_queues_keys)
            if key.decode().startswith(prefix)
        )
        if not names:
            return []
        owners = self.client.mget([queue_owner(name) for name in names])
        mine = self.namespace.encode()
        return [name for name, owner in zip(names, owners, strict=True) if owner == mine]

    @translated
    def live_workers(self, queues: Iterable[str]) -> dict[str, int]:
        """How many RQ workers listen on each queue, alive as far as RQ knows (one whose
        registration expired, killed or gone, is not counted): a queue with none holds
        its jobs until a ``bridge worker --queue NAME`` starts."""
        return {name: len(Worker.all(queue=self.queue(name))) for name in sorted(set(queues))}


def _job_data(job: Dispatch) -> Any:
    return Queue.prepare_data(
        JOB_FUNCTION,
        kwargs=job.encode(),
        job_id=job.job_id,
        timeout=_rq_timeout(job.timeout),
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=f"bridge task {job.task_id!r} attempt {job.attempt}",
    )


def _rq_timeout(timeout: float | None) -> int:
    """RQ counts whole seconds: a fractional timeout is rounded up."""
    if not timeout:
        return NO_TIMEOUT
    return max(1, int(-(-timeout // 1)))


def nudge_quietly(url: str, namespace: str) -> None:
    """Best-effort wake-up of a dispatcher (after ``bridge add``); never fails, never waits long."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.3)
        client.xadd(Keys(namespace).reports, {"nudge": "1"})
        client.close()
    except (RedisError, ValueError, OSError):
        pass
