"""The work the scenarios hand to both sides: task lists, graphs, a history, preloading.

Work is put in place before the clock starts, as a user's backlog would be: bridge's
tasks committed to the database, RQ's jobs enqueued in Redis.
"""

from __future__ import annotations

import random
import time
from typing import Any

from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from benchmarks.harness import (
    BRIDGE_QUEUE,
    RQ_NOOP,
    RQ_QUEUE,
    BenchDb,
    BenchError,
    Env,
    rq_queue,
)
from bridge import store
from bridge.graph import TaskSpec


def noop_specs(count: int, prefix: str = "t") -> list[TaskSpec]:
    return [TaskSpec(id=f"{prefix}{i:07d}", kind="noop") for i in range(count)]


def chain_specs(count: int) -> list[TaskSpec]:
    return [
        TaskSpec(id=f"c{i:06d}", kind="noop", dependencies=(f"c{i - 1:06d}",) if i else ())
        for i in range(count)
    ]


def layered_graph(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` noop tasks in layers; each depends on 1-3 tasks of the layer before."""
    rng = random.Random(seed)
    width = max(1, min(1000, count // 20))
    tasks: list[dict[str, Any]] = []
    previous: list[str] = []
    layer = 0
    while len(tasks) < count:
        current = []
        for i in range(min(width, count - len(tasks))):
            task_id = f"L{layer:04d}-{i:04d}"
            deps = rng.sample(previous, rng.randint(1, min(3, len(previous)))) if previous else []
            tasks.append({"id": task_id, "kind": "noop", "dependencies": deps})
            current.append(task_id)
        previous = current
        layer += 1
    return tasks


HISTORY_COLUMNS = (
    "id, description, status, dependencies, output, started_at, completed_at, created_at,"
    " updated_at, kind, priority, attempts, max_attempts, failures, timeout, pending_deps,"
    " seq, job_id"
)


def fill_history(db: BenchDb, count: int) -> None:
    """``count`` finished tasks (status done, one event each), inserted with plain SQL.

    Columns not named here take their schema defaults. PostgreSQL gets ``COPY``
    and then ``ANALYZE``, as autovacuum would have done for a database that grew
    this history over time (the timed runs must not wait for it to happen mid-run).
    """
    at = "2024-01-01 00:00:00.000000"
    tasks = (
        (f"h{i:07d}", "history", "done", "[]", "null", at, at, at, at, "noop")
        + (0, 1, 1, 0, None, 0, i + 1, f"job-h{i}")
        for i in range(count)
    )
    events = ((f"h{i:07d}", "working", "done", 1, "history", at, "succeeded") for i in range(count))
    event_columns = "task_id, from_status, to_status, attempt, worker, at, detail"
    with db.connect() as conn:
        if db.postgres:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY tasks ({HISTORY_COLUMNS}) FROM STDIN") as copy:
                    for row in tasks:
                        copy.write_row(row)
                with cur.copy(f"COPY task_events ({event_columns}) FROM STDIN") as copy:
                    for row in events:
                        copy.write_row(row)
            conn.execute("ANALYZE tasks")
            conn.execute("ANALYZE task_events")
            return
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO tasks ({HISTORY_COLUMNS}) VALUES ({', '.join('?' * 18)})", tasks
        )
        conn.executemany(
            f"INSERT INTO task_events ({event_columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", events
        )
        conn.execute("COMMIT")


def link_history(db: BenchDb, count: int, group: int) -> None:
    """Edges among ``fill_history``'s tasks: each run of ``group`` is a chain (a graph)."""
    edges = ((f"h{i:07d}", f"h{i - 1:07d}") for i in range(count) if i % group)
    with db.connect() as conn:
        if db.postgres:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY task_edges (task_id, depends_on) FROM STDIN") as copy:
                    for row in edges:
                        copy.write_row(row)
            conn.execute("ANALYZE task_edges")
            return
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO task_edges (task_id, depends_on) VALUES (?, ?)", edges)
        conn.execute("COMMIT")


PLANNED = {
    "ready": "SELECT id, kind, payload, timeout, attempts, queue FROM tasks"
    " WHERE status = 'available' AND pending_deps = 0"
    " AND (not_before IS NULL OR not_before <= '9999') ORDER BY priority DESC, seq LIMIT 64",
    "in flight": "SELECT id FROM tasks WHERE status IN ('queued', 'working')",
    "backoff": "SELECT min(not_before) FROM tasks"
    " WHERE status = 'available' AND not_before IS NOT NULL",
}
"""The dispatcher's per-tick reads whose cost must not grow with history (as it sends
them, parameters filled in: ``bridge.store.dispatching``)."""


def explain(db: BenchDb) -> str:
    """PostgreSQL: how the planner runs ``PLANNED`` on this database as it is now
    (no ANALYZE first: a backlog just added), in short: the scans and sorts per query."""
    if not db.postgres:
        return ""
    parts = []
    with db.connect() as conn:
        for name, sql in PLANNED.items():
            lines = [r[0] for r in conn.execute(f"EXPLAIN (COSTS OFF) {sql}").fetchall()]
            steps = [
                line.strip().removeprefix("->").strip()
                for line in lines
                if " Scan" in line or line.strip().removeprefix("->").strip().startswith("Sort")
            ]
            parts.append(f"{name}: {' > '.join(steps)}")
    return "; ".join(parts)


def preload_bridge(engine: Any, specs: list[TaskSpec]) -> float:
    """Commit ``specs`` as ``bridge add`` does (one transaction); returns the CPU it took."""
    own = time.process_time()
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=specs, queue=BRIDGE_QUEUE)
    return time.process_time() - own


def preload_rq(env: Env, count: int) -> float:
    """``count`` noop jobs by ``enqueue_many`` in one MULTI/EXEC; returns the CPU it took."""
    own = time.process_time()
    data = [Queue.prepare_data(RQ_NOOP) for _ in range(count)]
    with env.client.pipeline() as pipe:
        rq_queue(env).enqueue_many(data, pipeline=pipe)
        pipe.execute()
    return time.process_time() - own


def preload_rq_chain(env: Env, links: int) -> tuple[Job, Job]:
    """A ``depends_on`` chain of noop jobs: the head queued, every other job deferred."""
    queue = rq_queue(env)
    head = Job.create(
        RQ_NOOP, connection=env.client, serializer=JSONSerializer, id="c000000", origin=RQ_QUEUE
    )
    head.save()
    previous = head
    for i in range(1, links):
        previous = queue.enqueue(RQ_NOOP, job_id=f"c{i:06d}", depends_on=previous)
        if previous.get_status() is not JobStatus.DEFERRED:
            raise BenchError(f"RQ chain job {previous.id} is {previous.get_status()}")
    queue.enqueue_job(head)
    return head, previous
