"""An in-memory stand-in for ``bridge.broker.Broker``: the dispatcher's tick, wake-ups and
reconciliation get fast unit tests without Redis.

It keeps what the real broker keeps (queues, job records, heartbeats, fencing marks, a
report stream with pending entries) and plays the worker's part on request (``take``,
``finish``), so a test can put Redis in any state, including ones a real Redis reaches only
through faults. Every call is logged in ``calls`` so a test can check the order of effects.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from bridge.broker import Incoming, Withdrawal
from bridge.messages import Dispatch, Report
from bridge.recovery import JobState
from bridge.states import ReportKind


@dataclass
class Record:
    dispatch: Dispatch
    status: str = "queued"
    ended_at: datetime | None = None


@dataclass
class MemoryBroker:
    namespace: str = "0123456789ab"
    queues: dict[str, list[str]] = field(default_factory=dict)
    jobs: dict[str, Record] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    fenced: set[str] = field(default_factory=set)
    stream: list[tuple[bytes, Report | None]] = field(default_factory=list)
    pending: list[tuple[bytes, Report | None]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    redis_run: str = "run-1"
    blocks: list[int] = field(default_factory=list)
    """``block_ms`` of every read, in order (0: a look without waiting)."""
    _next_id: int = 0

    # ------------------------------------------------------------------ the broker API

    def claim_queues(self, names: Iterable[str]) -> None:
        self.calls.append("claim_queues")

    def release_queues(self, names: Iterable[str]) -> None:
        self.calls.append("release_queues")

    def claim_namespace(self, holder: str, ttl: float, take_from: str = "") -> str | None:
        return None

    def release_namespace(self, holder: str) -> None:
        pass

    def ensure_group(self) -> None:
        pass

    def run_id(self) -> str:
        return self.redis_run

    def eviction_risk(self) -> str | None:
        return None

    def reread_pending(self) -> None:
        self.stream[:0] = self.pending
        self.pending = []

    def read_reports(self, consumer: str, *, block_ms: int, count: int = 1000) -> list[Incoming]:
        self.blocks.append(block_ms)
        taken, self.stream = self.stream[:count], self.stream[count:]
        self.pending += taken
        return [Incoming(mid, report) for mid, report in taken]

    def last_report_id(self) -> bytes | None:
        entries = self.pending + self.stream
        return max((mid for mid, _ in entries), key=int, default=None)

    def settle(self, acknowledged: Sequence[bytes], jobs: Sequence[Dispatch]) -> None:
        self.pending = [(m, r) for m, r in self.pending if m not in set(acknowledged)]
        for job in jobs:
            self.calls.append(f"enqueue {job.job_id}")
            self.jobs[job.job_id] = Record(job)
            self.queues.setdefault(job.queue, []).append(job.job_id)

    def enqueue(self, jobs: Sequence[Dispatch]) -> None:
        self.settle((), jobs)

    def job_states(self, jobs: Sequence[tuple[str, str]]) -> dict[str, JobState]:
        states = {}
        for job_id, queue in jobs:
            record = self.jobs.get(job_id)
            states[job_id] = JobState(
                exists=record is not None,
                status=record.status if record else None,
                ended_at=record.ended_at if record else None,
                waiting=job_id in self.queues.get(queue, []),
                heartbeat=job_id in self.alive,
            )
        return states

    def supersede(
        self, jobs: Sequence[Withdrawal], *, withdraw: bool = True, force: bool = False
    ) -> set[str]:
        running = set()
        for job in jobs:
            self.calls.append(f"supersede {job.job_id}")
            if job.job_id in self.alive:
                running.add(job.job_id)
                if force:
                    self.fenced.add(job.job_id)
                continue
            self.fenced.add(job.job_id)
            if withdraw:
                self.jobs.pop(job.job_id, None)
                if job.job_id in self.queues.get(job.queue, []):
                    self.queues[job.queue].remove(job.job_id)
        return running

    def nudge(self) -> None:
        self._publish(None)

    # ------------------------------------------------------------------ the worker's part

    def _publish(self, report: Report | None) -> None:
        self._next_id += 1
        self.stream.append((str(self._next_id).encode(), report))

    def take(self, queue: str = "bridge") -> Dispatch:
        """A worker takes the oldest job and starts it (heartbeat alive, start reported)."""
        job_id = self.queues[queue].pop(0)
        assert job_id not in self.fenced, f"a worker took superseded job {job_id}"
        record = self.jobs[job_id]
        record.status = "started"
        self.alive.add(job_id)
        d = record.dispatch
        self._publish(Report(d.task_id, d.attempt, ReportKind.STARTED, d.job_id, "w1"))
        return d

    def finish(self, d: Dispatch, *, report: bool = True, output: str = '"ok"') -> None:
        """The job returns: RQ marks it finished; its report is sent unless ``report`` is off."""
        self.jobs[d.job_id].status = "finished"
        self.jobs[d.job_id].ended_at = datetime.now(timezone.utc)
        self.alive.discard(d.job_id)
        if report:
            self._publish(
                Report(d.task_id, d.attempt, ReportKind.SUCCEEDED, d.job_id, "w1", output=output)
            )
