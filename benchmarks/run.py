"""Benchmark bridge against plain RQ on the same machine, Redis and worker class.

Run ``python benchmarks/run.py`` (``--help`` for sizes). It starts its own
private redis-server, uses temporary SQLite files, runs every scenario
``--repeat`` times, prints a table of medians and ratios (bridge / plain RQ),
PASS/MISS against the targets, and a last line ``BENCH_JSON {...}``.

What each scenario measures is described in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import rq  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.job import Job, JobStatus  # noqa: E402
from rq.registry import FailedJobRegistry, FinishedJobRegistry  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from bridge import graph, store  # noqa: E402
from bridge.broker import Broker  # noqa: E402
from bridge.graph import TaskSpec  # noqa: E402
from bridge.redis_server import PrivateRedis  # noqa: E402

BRIDGE_QUEUE = "bench"
RQ_QUEUE = "rqbench"
RQ_NOOP = "rq_jobs.noop"
UNFINISHED = ("available", "queued", "working", "failed", "cancelled")
POLL = 0.05
"""Seconds between completion polls (the issue asks for ~50 ms)."""
CHAIN_POLL = 0.01
"""Chains finish in a few seconds: poll finer so the poll does not dominate per-link numbers."""
READY_TIMEOUT = 30.0


# ------------------------------------------------------------------------------ processes


class Processes:
    """Child processes this benchmark started; each in its own session, logs in ``logdir``."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{len(self.started):02d}-{name}.log", "wb")
        try:
            proc = subprocess.Popen(
                list(argv),
                env=env,
                cwd=str(self.logdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        """SIGTERM (warm shutdown), then SIGKILL of the process group we created."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        _kill_group(proc)  # a fork worker's work-horse, if one is left
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.logdir.glob("*.log"))
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------------------ environment


@dataclass
class Env:
    """Everything a run shares: options, the private Redis, a scratch directory."""

    args: argparse.Namespace
    redis: PrivateRedis
    client: redis.Redis
    scratch: Path
    counter: int = 0

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RQ_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def bridge_env(self, db: Path) -> dict[str, str]:
        env = self.base_env()
        env.update(
            BRIDGE_DATABASE_URL=f"sqlite:///{db}",
            BRIDGE_REDIS_URL=self.redis.url,
            BRIDGE_QUEUE=BRIDGE_QUEUE,
            BRIDGE_WORKER_CLASS=self.args.worker_class,
            BRIDGE_SLOTS=str(self.args.slots),
        )
        return env

    @contextmanager
    def sandbox(self, label: str) -> Iterator[tuple[Path, Processes]]:
        """A fresh directory and an empty Redis; every process started here is stopped after."""
        self.counter += 1
        folder = self.scratch / f"{self.counter:03d}-{label}"
        folder.mkdir()
        procs = Processes(folder)
        self.client.flushall()
        try:
            yield folder, procs
        except BaseException:
            procs.stop_all()
            if self.args.verbose:
                print(procs.logs(), file=sys.stderr)
            raise
        finally:
            procs.stop_all()
            if not self.args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            self.client.flushall()


BRIDGE = [sys.executable, "-m", "bridge"]


def start_bridge(
    env: Env, procs: Processes, db: Path, workers: int
) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
    """A real ``bridge dispatch`` and ``workers`` real ``bridge worker --quiet``, all ready."""
    penv = env.bridge_env(db)
    dispatcher = procs.start("dispatch", [*BRIDGE, "dispatch"], penv)
    started = [
        procs.start(f"worker{i}", [*BRIDGE, "worker", "--quiet"], penv) for i in range(workers)
    ]
    queue = Queue(BRIDGE_QUEUE, connection=env.client, serializer=JSONSerializer)
    wait_for(
        lambda: (
            Worker.count(connection=env.client, queue=queue) >= workers
            and _dispatcher_ready(db, env.args.slots)
        ),
        "bridge dispatcher and workers to start",
        [dispatcher, *started],
        procs,
    )
    return dispatcher, started


def _dispatcher_ready(db: Path, slots: int) -> bool:
    """The dispatcher holds its lease and has rebuilt the slot table (``start`` is done)."""
    try:
        with _sqlite(db) as conn:
            leases = conn.execute("SELECT count(*) FROM leases").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM worker_slots").fetchone()[0]
    except sqlite3.Error:
        return False
    return leases >= 1 and rows >= slots


def start_rq_workers(env: Env, procs: Processes, workers: int) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, str(HERE / "rq_worker.py"), env.redis.url, RQ_QUEUE]
    started = [
        procs.start(f"rqworker{i}", [*argv, env.args.worker_class], env.base_env())
        for i in range(workers)
    ]
    queue = rq_queue(env)
    wait_for(
        lambda: Worker.count(connection=env.client, queue=queue) >= workers,
        "RQ workers to start",
        started,
        procs,
    )
    return started


def rq_queue(env: Env) -> Queue:
    return Queue(RQ_QUEUE, connection=env.client, serializer=JSONSerializer)


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    watched: Sequence[subprocess.Popen[bytes]],
    procs: Processes,
    timeout: float = READY_TIMEOUT,
    every: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p for p in watched if p.poll() is not None]
        if dead:
            raise BenchError(f"a process died while waiting for {what}:\n{procs.logs()}")
        time.sleep(every)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}:\n{procs.logs()}")


@contextmanager
def _sqlite(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def new_db(folder: Path) -> tuple[Path, Any]:
    """A fresh SQLite file with bridge's schema, and an engine on it."""
    db = folder / "bench.db"
    return db, store.open_engine(f"sqlite:///{db}")


def bridge_add(env: Env, engine: Any, specs: list[TaskSpec]) -> float:
    """Add tasks in process as ``bridge add`` does (one transaction, then a nudge).

    Returns the ``perf_counter`` right after the commit.
    """
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=specs)
    committed = time.perf_counter()
    Broker(env.client, BRIDGE_QUEUE).nudge()
    return committed


def wait_bridge_done(
    db: Path,
    watched: Sequence[subprocess.Popen[bytes]],
    procs: Processes,
    timeout: float,
    every: float = POLL,
) -> float:
    """Poll the database until no task is unfinished; returns the ``perf_counter`` then."""
    deadline = time.monotonic() + timeout
    with _sqlite(db) as conn:
        while True:
            counts = dict(
                conn.execute(
                    "SELECT status, count(*) FROM tasks WHERE status IN"
                    f" ({','.join('?' * len(UNFINISHED))}) GROUP BY status",
                    UNFINISHED,
                ).fetchall()
            )
            if not counts:
                return time.perf_counter()
            if counts.get("failed") or counts.get("cancelled"):
                raise BenchError(f"bridge tasks failed: {counts}\n{procs.logs()}")
            if time.monotonic() > deadline:
                raise BenchError(f"bridge did not finish within {timeout:g}s: {counts}")
            if any(p.poll() is not None for p in watched):
                raise BenchError(f"a bridge process died: {counts}\n{procs.logs()}")
            time.sleep(every)


def wait_rq_done(
    env: Env,
    total: int,
    watched: Sequence[subprocess.Popen[bytes]],
    procs: Processes,
    timeout: float,
    every: float = POLL,
) -> float:
    """Poll Redis until ``total`` jobs are in the finished registry."""
    queue = rq_queue(env)
    finished = FinishedJobRegistry(queue=queue).key
    failed = FailedJobRegistry(queue=queue).key
    deadline = time.monotonic() + timeout
    while True:
        with env.client.pipeline(transaction=False) as pipe:
            pipe.zcard(finished)
            pipe.zcard(failed)
            done, bad = pipe.execute()
        if done >= total:
            return time.perf_counter()
        if bad:
            raise BenchError(f"{bad} RQ job(s) failed\n{procs.logs()}")
        if time.monotonic() > deadline:
            raise BenchError(f"RQ did not finish within {timeout:g}s: {done}/{total}")
        if any(p.poll() is not None for p in watched):
            raise BenchError(f"an RQ worker died\n{procs.logs()}")
        time.sleep(every)


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


def fill_history(db: Path, count: int) -> None:
    """``count`` finished tasks (status done, one event each), inserted with plain SQL."""
    at = "2024-01-01 00:00:00.000000"
    rows = (
        (f"h{i:07d}", "history", "done", "[]", "null", at, at, at, at, "noop", i + 1, f"job-h{i}")
        for i in range(count)
    )
    with _sqlite(db) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO tasks (id, description, status, dependencies, output, started_at,"
            " completed_at, created_at, updated_at, kind, priority, attempts, max_attempts,"
            " failures, timeout, pending_deps, seq, job_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, 1, 0, NULL, 0, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO task_events (task_id, from_status, to_status, attempt, worker, at,"
            " detail) VALUES (?, 'working', 'done', 1, 'history', ?, 'succeeded')",
            ((f"h{i:07d}", at) for i in range(count)),
        )
        conn.execute("COMMIT")


# ------------------------------------------------------------------------------ CPU


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children (a fork worker's horses)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


class CpuMeter:
    """CPU used by named groups of processes between ``__init__`` and ``stop``."""

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.groups = groups
        self.start = {name: [cpu_seconds(p) for p in pids] for name, pids in groups.items()}

    def stop(self) -> dict[str, float]:
        return {
            name: sum(cpu_seconds(p) - s for p, s in zip(pids, self.start[name], strict=True))
            for name, pids in self.groups.items()
        }


def machine_cpu() -> tuple[float, float]:
    """Busy and steal CPU seconds of the whole machine, all cores (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


class LoadMeter:
    """How busy the machine was with work that is not this benchmark's (noise gauge).

    Other CPU = machine busy time - CPU of ``pids`` (our Redis, dispatcher, workers)
    - this process's own CPU, averaged over the wall time: in cores.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.ours = [cpu_seconds(p) for p in self.pids]
        self.busy, self.steal = machine_cpu()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        busy, steal = machine_cpu()
        ours = sum(cpu_seconds(p) - s for p, s in zip(self.pids, self.ours, strict=True))
        ours += time.process_time() - self.own
        return {
            "other_cores": max(0.0, busy - self.busy - ours) / wall,
            "steal_cores": (steal - self.steal) / wall,
        }


def load_meter(env: Env, procs: Processes) -> LoadMeter:
    return LoadMeter([redis_pid(env), *(p.pid for p in procs.started)])


def redis_pid(env: Env) -> int:
    return int(env.client.info("server")["process_id"])


def per_task_ms(cpu: dict[str, float], count: int) -> dict[str, float]:
    out = {f"cpu_ms_{name}": seconds * 1000 / count for name, seconds in cpu.items()}
    out["cpu_ms_total"] = sum(cpu.values()) * 1000 / count
    return out


# ------------------------------------------------------------------------------ scenarios


def bridge_throughput(env: Env, tasks: int, history: int = 0) -> dict[str, float]:
    """Scenario 1 (and 3 with ``history``): ``tasks`` independent noops, 2 workers."""
    with env.sandbox(f"bridge-throughput-h{history}") as (folder, procs):
        db, engine = new_db(folder)
        if history:
            fill_history(db, history)
        dispatcher, workers = start_bridge(env, procs, db, 2)
        specs = noop_specs(tasks)
        meter = CpuMeter(
            {
                "dispatcher": [dispatcher.pid],
                "workers": [w.pid for w in workers],
                "redis": [redis_pid(env)],
            }
        )
        load = load_meter(env, procs)
        t0 = bridge_add(env, engine, specs)
        t1 = wait_bridge_done(db, [dispatcher, *workers], procs, env.args.timeout)
        cpu = meter.stop()
        noise = load.stop()
        hwm = vm_hwm_kb(dispatcher.pid)
        engine.dispose()
    seconds = t1 - t0
    return {
        "seconds": seconds,
        "per_second": tasks / seconds,
        "dispatcher_hwm_kb": hwm or 0,
        **per_task_ms(cpu, tasks),
        **noise,
    }


def rq_throughput(env: Env, jobs: int) -> dict[str, float]:
    """Scenario 1, plain RQ: ``enqueue_many`` in one MULTI/EXEC, drained by 2 workers."""
    with env.sandbox("rq-throughput") as (_folder, procs):
        workers = start_rq_workers(env, procs, 2)
        queue = rq_queue(env)
        meter = CpuMeter({"workers": [w.pid for w in workers], "redis": [redis_pid(env)]})
        load = load_meter(env, procs)
        own = time.process_time()
        data = [Queue.prepare_data(RQ_NOOP) for _ in range(jobs)]
        with env.client.pipeline() as pipe:  # MULTI/EXEC: all jobs appear at once
            queue.enqueue_many(data, pipeline=pipe)
            pipe.execute()
        t0 = time.perf_counter()
        enqueue_cpu = time.process_time() - own
        t1 = wait_rq_done(env, jobs, workers, procs, env.args.timeout)
        cpu = meter.stop()
        noise = load.stop()
    cpu["enqueue"] = enqueue_cpu
    seconds = t1 - t0
    return {"seconds": seconds, "per_second": jobs / seconds, **per_task_ms(cpu, jobs), **noise}


def bridge_chain(env: Env, links: int) -> dict[str, float]:
    """Scenario 2: a linear chain of noops, 1 worker; clock from the add's commit."""
    with env.sandbox("bridge-chain") as (folder, procs):
        db, engine = new_db(folder)
        dispatcher, workers = start_bridge(env, procs, db, 1)
        load = load_meter(env, procs)
        t0 = bridge_add(env, engine, chain_specs(links))
        t1 = wait_bridge_done(db, [dispatcher, *workers], procs, env.args.timeout, every=CHAIN_POLL)
        noise = load.stop()
        with _sqlite(db) as conn:
            first, last = conn.execute(
                "SELECT min(started_at), max(completed_at) FROM tasks"
            ).fetchone()
        engine.dispose()
    span = _seconds_between(first, last)
    return {
        "seconds": t1 - t0,
        "ms_per_link": (t1 - t0) * 1000 / links,
        "span_ms_per_link": span * 1000 / links,
        **noise,
    }


def rq_chain(env: Env, links: int) -> dict[str, float]:
    """Scenario 2, plain RQ: job i is enqueued with ``depends_on`` job i-1.

    The head job is saved but enqueued only when the clock starts, so the whole
    chain is in place (all deferred) before the worker sees any of it.
    """
    with env.sandbox("rq-chain") as (_folder, procs):
        workers = start_rq_workers(env, procs, 1)
        queue = rq_queue(env)
        head = Job.create(
            RQ_NOOP,
            connection=env.client,
            serializer=JSONSerializer,
            id="c000000",
            origin=RQ_QUEUE,
        )
        head.save()
        previous = head
        for i in range(1, links):
            previous = queue.enqueue(RQ_NOOP, job_id=f"c{i:06d}", depends_on=previous)
            if previous.get_status() is not JobStatus.DEFERRED:
                raise BenchError(f"RQ chain job {previous.id} is {previous.get_status()}")
        load = load_meter(env, procs)
        t0 = time.perf_counter()
        queue.enqueue_job(head)
        t1 = wait_rq_done(env, links, workers, procs, env.args.timeout, every=CHAIN_POLL)
        noise = load.stop()
        first = Job.fetch(head.id, connection=env.client, serializer=JSONSerializer)
        last = Job.fetch(previous.id, connection=env.client, serializer=JSONSerializer)
        if first.started_at is None or last.ended_at is None:
            raise BenchError("RQ chain jobs carry no start/end time")
        span = (last.ended_at - first.started_at).total_seconds()
    return {
        "seconds": t1 - t0,
        "ms_per_link": (t1 - t0) * 1000 / links,
        "span_ms_per_link": span * 1000 / links,
        **noise,
    }


def _seconds_between(first: str, last: str) -> float:
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return (datetime.strptime(last, fmt) - datetime.strptime(first, fmt)).total_seconds()


def bridge_bulk_cli(
    env: Env, graph_file: Path, count: int, keep_db: Path | None = None
) -> dict[str, float]:
    """Scenario 4: ``bridge add --file`` as a real subprocess, timed end to end.

    The database file already has its schema (an existing deployment's). With
    ``keep_db`` the loaded database is moved there for scenario 5b.
    """
    with env.sandbox("bridge-bulk-cli") as (folder, _procs):
        db, engine = new_db(folder)
        engine.dispose()
        out, err = folder / "add.out", folder / "add.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [*BRIDGE, "add", "--file", str(graph_file)],
                env=env.bridge_env(db),
                cwd=str(folder),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
            peak_kb = 0  # VmHWM restarts at exec; ru_maxrss would count the fork of this process
            deadline = time.monotonic() + env.args.timeout
            while proc.poll() is None:
                peak_kb = max(peak_kb, vm_hwm_kb(proc.pid) or 0)
                if time.monotonic() > deadline:
                    proc.kill()
                try:
                    proc.wait(timeout=0.02)
                except subprocess.TimeoutExpired:
                    pass
            seconds = time.perf_counter() - t0
        text = out.read_text() + err.read_text()
        if proc.returncode != 0 or f"added {count} task(s)" not in text:
            raise BenchError(f"bridge add failed ({proc.returncode}): {text}")
        if keep_db is not None:
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{db}{suffix}").exists():
                    shutil.move(f"{db}{suffix}", f"{keep_db}{suffix}")
    return {"seconds": seconds, "per_second": count / seconds, "peak_rss_kb": peak_kb}


def bridge_bulk_store(env: Env, specs: list[TaskSpec]) -> dict[str, float]:
    """Scenario 4, in process: ``store.add_tasks`` in one transaction, commit included."""
    with env.sandbox("bridge-bulk-store") as (folder, _procs):
        _db, engine = new_db(folder)
        t0 = time.perf_counter()
        with store.writing(engine) as session:
            added = store.add_tasks(session=session, specs=specs)
        seconds = time.perf_counter() - t0
        engine.dispose()
        if len(added.added) != len(specs):
            raise BenchError(f"store.add_tasks added {len(added.added)} of {len(specs)}")
    return {"seconds": seconds, "per_second": len(specs) / seconds}


def rq_bulk(env: Env, count: int) -> dict[str, float]:
    """Scenario 4, plain RQ: ``prepare_data`` + ``enqueue_many`` of independent jobs."""
    with env.sandbox("rq-bulk") as (_folder, _procs):
        queue = rq_queue(env)
        t0 = time.perf_counter()
        data = [Queue.prepare_data(RQ_NOOP) for _ in range(count)]
        with env.client.pipeline() as pipe:
            queue.enqueue_many(data, pipeline=pipe)
            pipe.execute()
        seconds = time.perf_counter() - t0
        if queue.count != count:
            raise BenchError(f"RQ queue holds {queue.count} of {count} jobs")
    return {"seconds": seconds, "per_second": count / seconds}


def bridge_memory_complete(env: Env, specs: list[TaskSpec]) -> dict[str, float]:
    """Scenario 5a: a layered graph run to completion; dispatcher VmHWM before stopping it."""
    with env.sandbox("bridge-memory-complete") as (folder, procs):
        db, engine = new_db(folder)
        dispatcher, workers = start_bridge(env, procs, db, 2)
        meter = CpuMeter({"dispatcher": [dispatcher.pid]})
        t0 = bridge_add(env, engine, specs)
        t1 = wait_bridge_done(db, [dispatcher, *workers], procs, env.args.timeout)
        cpu = meter.stop()
        hwm = vm_hwm_kb(dispatcher.pid)
        engine.dispose()
    return {
        "seconds": t1 - t0,
        "per_second": len(specs) / (t1 - t0),
        "hwm_kb": hwm or 0,
        **per_task_ms(cpu, len(specs)),
    }


def bridge_memory_bounded(env: Env, db: Path, count: int, seconds: float) -> dict[str, float]:
    """Scenario 5b: ``db`` holds the whole bulk graph; dispatch for ``seconds``, VmHWM then."""
    with env.sandbox("bridge-memory-bounded") as (folder, procs):
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                shutil.move(f"{db}{suffix}", folder / f"bench.db{suffix}")
        db = folder / "bench.db"
        t0 = time.perf_counter()
        dispatcher, _workers = start_bridge(env, procs, db, 2)
        ready = time.perf_counter() - t0
        time.sleep(seconds)
        hwm = vm_hwm_kb(dispatcher.pid)
        elapsed = time.perf_counter() - t0
        if dispatcher.poll() is not None:
            raise BenchError(f"dispatcher died\n{procs.logs()}")
        with _sqlite(db) as conn:
            done = conn.execute("SELECT count(*) FROM tasks WHERE status = 'done'").fetchone()[0]
    return {
        "seconds": elapsed,
        "startup_seconds": ready,
        "tasks": count,
        "done": done,
        "hwm_kb": hwm or 0,
    }


# ------------------------------------------------------------------------------ reporting


@dataclass
class Row:
    scenario: str
    metric: str
    bridge: float | None
    rq: float | None = None
    ratio: float | None = None
    target: str = ""
    verdict: str = ""
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def rounds(
    env: Env, steps: Sequence[tuple[str, Callable[[], dict[str, float]]]]
) -> dict[str, list[dict[str, float]]]:
    """Run ``steps`` in turn, ``--repeat`` times (b, r, b, r, ...): a slow spell of the
    machine then hits both sides instead of one. Returns each step's runs."""
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in steps}
    for i in range(env.args.repeat):
        for label, fn in steps:
            started = time.perf_counter()
            result = fn()
            runs[label].append(result)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items())
            print(
                f"  {label} [{i + 1}/{env.args.repeat}] {shown}"
                f" ({time.perf_counter() - started:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    return runs


QUIET = 0.25
"""Cores used by other processes below which a run counts as undisturbed."""


def quiet_row(
    rows: list[Row],
    scenario: str,
    metric: str,
    b_runs: list[dict[str, float]],
    r_runs: list[dict[str, float]],
    key: str,
) -> None:
    """The medians again over the runs the rest of the machine left alone (if any)."""
    b_quiet = [r for r in b_runs if r.get("other_cores", 1.0) < QUIET]
    r_quiet = [r for r in r_runs if r.get("other_cores", 1.0) < QUIET]
    if not b_quiet or not r_quiet or (len(b_quiet), len(r_quiet)) == (len(b_runs), len(r_runs)):
        return  # nothing to compare, or the same as the row above
    b, r = median(b_quiet, key), median(r_quiet, key)
    rows.append(
        Row(
            scenario,
            metric,
            b,
            r,
            b / r,
            "(info)",
            "",
            note=f"only runs with < {QUIET} cores of other load:"
            f" {len(b_quiet)}/{len(b_runs)} bridge, {len(r_quiet)}/{len(r_runs)} RQ",
        )
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def print_table(rows: list[Row]) -> None:
    headers = ["scenario", "metric", "bridge", "plain RQ", "ratio", "target", "verdict"]
    table = [
        [r.scenario, r.metric, fmt(r.bridge), fmt(r.rq), fmt(r.ratio), r.target, r.verdict]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
    notes = [f"  {r.scenario} / {r.metric}: {r.note}" for r in rows if r.note]
    if notes:
        print("notes:")
        print("\n".join(notes))


def noise_summary(raw: dict[str, Any]) -> dict[str, float]:
    runs = [r for value in raw.values() if isinstance(value, list) for r in value]
    other = [r["other_cores"] for r in runs if "other_cores" in r]
    steal = [r["steal_cores"] for r in runs if "steal_cores" in r]
    if not other:
        return {}
    return {
        "other_cores_median": statistics.median(other),
        "other_cores_max": max(other),
        "steal_cores_median": statistics.median(steal),
    }


# ------------------------------------------------------------------------------ main


SIZES = {
    # worker class: (tasks, chain, memory_tasks). RQ's forking worker forks a
    # work-horse per job (~20 ms), so the same sizes would take ten times longer.
    "simple": (3_000, 300, 3_000),
    "fork": (400, 100, 600),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Defaults keep a full run under 5 minutes on 2 cores; the issue's sizes are"
        " --tasks 10000 --bulk 100000 (about 10 minutes).",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        help="scenario 1/3: noop tasks [default: 3000; 400 with --worker-class fork]",
    )
    parser.add_argument(
        "--chain", type=int, help="scenario 2: chain length [default: 300; 100 with fork]"
    )
    parser.add_argument(
        "--history", type=int, default=100_000, help="scenario 3: finished tasks already in the DB"
    )
    parser.add_argument(
        "--bulk", type=int, default=50_000, help="scenario 4: tasks added at once (issue: 100000)"
    )
    parser.add_argument(
        "--memory-tasks",
        type=int,
        help="scenario 5a: layered graph run to completion, 0 skips [default: 3000; 600 with fork]",
    )
    parser.add_argument(
        "--memory-graph",
        type=int,
        default=100_000,
        help="scenario 5b: tasks of the layered graph loaded before dispatching",
    )
    parser.add_argument(
        "--memory-seconds",
        type=float,
        default=10.0,
        help="scenario 5b: seconds the --memory-graph graph is dispatched (0: skip)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median kept)")
    parser.add_argument(
        "--worker-class",
        choices=tuple(SIZES),
        default="simple",
        help="RQ worker class of both sides (bridge: BRIDGE_WORKER_CLASS) [default: simple]",
    )
    parser.add_argument(
        "--slots", type=int, default=64, help="BRIDGE_SLOTS: tasks in flight at once [default: 64]"
    )
    parser.add_argument(
        "--only",
        default="throughput,chain,history,bulk,memory",
        help="comma-separated scenarios to run [default: all]",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per-run time limit (s)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep scratch files and logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="print process logs on error")
    args = parser.parse_args(argv)
    tasks, chain, memory_tasks = SIZES[args.worker_class]
    if args.quick:
        tasks, chain, memory_tasks = 300, 30, 1_000
        args.history, args.bulk, args.memory_graph = 2_000, 2_000, 2_000
        args.memory_seconds, args.repeat = 2.0, 1
    args.tasks = tasks if args.tasks is None else args.tasks
    args.chain = chain if args.chain is None else args.chain
    args.memory_tasks = memory_tasks if args.memory_tasks is None else args.memory_tasks
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for name in ("tasks", "chain", "bulk", "repeat", "slots"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


SCENARIOS = ("throughput", "chain", "history", "bulk", "memory")


def run(env: Env) -> Results:
    """Every scenario asked for; one that fails becomes an ERROR row, the others still run."""
    res = Results()
    steps: list[tuple[str, Callable[[Env, Results], None]]] = [
        ("1 throughput / 3 history", scenario_throughput),
        ("2 chain", scenario_chain),
        ("4 bulk add", scenario_bulk),
        ("5 memory", scenario_memory),
    ]
    for name, step in steps:
        try:
            step(env, res)
        except Exception as exc:  # a crash of bridge or RQ is a result too: report, go on
            message = f"{type(exc).__name__}: {exc}"
            print(f"{name} failed:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            res.rows.append(
                Row(name, "error", None, verdict="ERROR", note=message.splitlines()[0][:200])
            )
    return res


def bulk_paths(env: Env) -> tuple[Path, Path]:
    """The bulk graph file, and where scenario 4 leaves a loaded database for 5b."""
    return env.scratch / "bulk-graph.json", env.scratch / "bulk-loaded.db"


def scenario_throughput(env: Env, res: Results) -> None:
    args, rows, raw = env.args, res.rows, res.raw
    if not {"throughput", "history"} & args.only:
        return
    steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("bridge", lambda: bridge_throughput(env, args.tasks))
    ]
    if "throughput" in args.only:
        steps.append(("rq", lambda: rq_throughput(env, args.tasks)))
    if "history" in args.only:
        steps.append(("bridge+history", lambda: bridge_throughput(env, args.tasks, args.history)))
    print(
        f"[1/3] throughput: {args.tasks} noop tasks, 2 workers"
        + (f"; history: same over {args.history} done tasks" if "history" in args.only else ""),
        file=sys.stderr,
    )
    runs = rounds(env, steps)
    raw["throughput_bridge"] = b_runs = runs["bridge"]
    b = median(b_runs, "per_second")
    if "throughput" in args.only:
        raw["throughput_rq"] = r_runs = runs["rq"]
        r = median(r_runs, "per_second")
        rows.append(
            Row(
                "1 throughput",
                f"tasks/s ({args.tasks})",
                b,
                r,
                b / r,
                ">= 0.8",
                verdict(b / r >= 0.8),
                note="add/enqueue committed -> all done, 2 warm workers; polled every 50 ms",
            )
        )
        quiet_row(rows, "1 throughput", "tasks/s, quiet runs", b_runs, r_runs, "per_second")
        bc, rc = median(b_runs, "cpu_ms_total"), median(r_runs, "cpu_ms_total")
        rows.append(
            Row(
                "1 throughput",
                "CPU ms/task, all procs",
                bc,
                rc,
                bc / rc,
                "(info)",
                "",
                note="bridge: dispatcher {:.2f} + workers {:.2f} + redis {:.2f};"
                " RQ: workers {:.2f} + redis {:.2f} + client enqueue {:.2f}".format(
                    median(b_runs, "cpu_ms_dispatcher"),
                    median(b_runs, "cpu_ms_workers"),
                    median(b_runs, "cpu_ms_redis"),
                    median(r_runs, "cpu_ms_workers"),
                    median(r_runs, "cpu_ms_redis"),
                    median(r_runs, "cpu_ms_enqueue"),
                ),
            )
        )
    if "history" in args.only:
        raw["history_bridge"] = h_runs = runs["bridge+history"]
        h = median(h_runs, "per_second")
        rows.append(
            Row(
                "3 history",
                f"tasks/s over {args.history} done",
                h,
                b,
                h / b,
                ">= 0.9",
                verdict(h / b >= 0.9),
                note="the 'plain RQ' column here is bridge on an empty database",
            )
        )
        hc, bc = median(h_runs, "cpu_ms_dispatcher"), median(b_runs, "cpu_ms_dispatcher")
        rows.append(
            Row(
                "3 history",
                "dispatcher CPU ms/task",
                hc,
                bc,
                hc / bc,
                "(info)",
                "",
                note="CPU time is less sensitive than wall time to other load on the machine",
            )
        )


def scenario_chain(env: Env, res: Results) -> None:
    args, rows, raw = env.args, res.rows, res.raw
    if "chain" not in args.only:
        return
    print(f"[2] dependency chain: {args.chain} links, 1 worker", file=sys.stderr)
    runs = rounds(
        env,
        [
            ("bridge", lambda: bridge_chain(env, args.chain)),
            ("rq", lambda: rq_chain(env, args.chain)),
        ],
    )
    raw["chain_bridge"], raw["chain_rq"] = b_runs, r_runs = runs["bridge"], runs["rq"]
    b, r = median(b_runs, "ms_per_link"), median(r_runs, "ms_per_link")
    rows.append(
        Row(
            "2 chain",
            f"ms/link ({args.chain} links)",
            b,
            r,
            b / r,
            "<= 2.0",
            verdict(b / r <= 2.0),
            note="wall clock, release of the chain -> last task done, / links",
        )
    )
    quiet_row(rows, "2 chain", "ms/link, quiet runs", b_runs, r_runs, "ms_per_link")
    bs, rs = median(b_runs, "span_ms_per_link"), median(r_runs, "span_ms_per_link")
    rows.append(
        Row(
            "2 chain",
            "ms/link, own timestamps",
            bs,
            rs,
            bs / rs,
            "(info)",
            "",
            note="first task's start -> last task's end as the tasks/jobs record them",
        )
    )


def scenario_bulk(env: Env, res: Results) -> None:
    args, rows, raw = env.args, res.rows, res.raw
    if "bulk" not in args.only:
        return
    graph_file, kept_db = bulk_paths(env)
    graph_file.write_text(json.dumps(layered_graph(args.bulk)))
    print(f"[4] bulk add: {args.bulk} tasks, layered graph", file=sys.stderr)
    specs = graph.parse_graph(graph_file.read_text(), str(graph_file))
    count = {"cli": 0}

    def cli() -> dict[str, float]:
        count["cli"] += 1
        last = (
            count["cli"] == args.repeat and "memory" in args.only and args.memory_graph == args.bulk
        )
        return bridge_bulk_cli(env, graph_file, args.bulk, kept_db if last else None)

    runs = rounds(
        env,
        [
            ("bridge add --file", cli),
            ("store.add_tasks", lambda: bridge_bulk_store(env, specs)),
            ("rq enqueue_many", lambda: rq_bulk(env, args.bulk)),
        ],
    )
    raw["bulk_cli"] = runs["bridge add --file"]
    raw["bulk_store"] = runs["store.add_tasks"]
    raw["bulk_rq"] = runs["rq enqueue_many"]
    c, s, r = (median(x, "per_second") for x in runs.values())
    rows.append(
        Row(
            "4 bulk add",
            f"tasks/s, CLI ({args.bulk})",
            c,
            r,
            c / r,
            ">= 0.5",
            verdict(c / r >= 0.5),
            note="`bridge add --file` subprocess end to end vs prepare_data+enqueue_many",
        )
    )
    rows.append(
        Row(
            "4 bulk add",
            "tasks/s, store.add_tasks",
            s,
            r,
            s / r,
            "(info)",
            "",
            note="in process: one transaction, commit included, specs already parsed",
        )
    )
    rows.append(
        Row(
            "4 bulk add",
            "CLI peak RSS MB",
            median(raw["bulk_cli"], "peak_rss_kb") / 1024,
            None,
            None,
            "(info)",
            "",
            note=f"`bridge add --file` of {args.bulk} tasks: VmHWM polled every 20 ms",
        )
    )


def scenario_memory(env: Env, res: Results) -> None:
    if "memory" in env.args.only:
        memory_rows(env, res, *bulk_paths(env))


MEMORY_LIMIT_MB = 150.0


def memory_rows(env: Env, res: Results, graph_file: Path, kept_db: Path) -> None:
    args, rows, raw = env.args, res.rows, res.raw
    if args.memory_tasks > 0:
        print(f"[5a] memory: {args.memory_tasks}-task layered graph to completion", file=sys.stderr)
        specs = [graph.spec_from_mapping(t) for t in layered_graph(args.memory_tasks)]
        m = bridge_memory_complete(env, specs)
        raw["memory_complete"] = m
        mb = m["hwm_kb"] / 1024
        rows.append(
            Row(
                "5 memory",
                f"dispatcher MB, {args.memory_tasks} run",
                mb,
                None,
                None,
                "<= 150 MB",
                verdict(0 < mb <= MEMORY_LIMIT_MB),
                note=f"VmHWM once the whole graph was done ({m['seconds']:.1f}s,"
                f" {m['per_second']:.0f} tasks/s)",
            )
        )
    if args.memory_seconds > 0:
        print(
            f"[5b] memory: {args.memory_graph}-task graph loaded, dispatched for"
            f" {args.memory_seconds:g}s",
            file=sys.stderr,
        )
        if not kept_db.exists():  # not left by scenario 4: load the graph with the CLI
            if args.memory_graph != args.bulk or not graph_file.exists():
                graph_file.write_text(json.dumps(layered_graph(args.memory_graph)))
            raw["memory_graph_add"] = bridge_bulk_cli(env, graph_file, args.memory_graph, kept_db)
        m = bridge_memory_bounded(env, kept_db, args.memory_graph, args.memory_seconds)
        raw["memory_bounded"] = m
        mb = m["hwm_kb"] / 1024
        rows.append(
            Row(
                "5 memory",
                f"dispatcher MB, {args.memory_graph} loaded",
                mb,
                None,
                None,
                "<= 150 MB",
                verdict(0 < mb <= MEMORY_LIMIT_MB),
                note=f"VmHWM {m['seconds']:.1f}s after start (ready after"
                f" {m['startup_seconds']:.1f}s); {m['done']} of {m['tasks']} done by then",
            )
        )
        if "memory_graph_add" in raw:
            add = raw["memory_graph_add"]
            rows.append(
                Row(
                    "5 memory",
                    f"CLI add MB, {args.memory_graph}",
                    add["peak_rss_kb"] / 1024,
                    None,
                    None,
                    "(info)",
                    "",
                    note=f"`bridge add --file` that loaded it: VmHWM,"
                    f" {add['seconds']:.1f}s ({add['per_second']:.0f} tasks/s)",
                )
            )
    peaks = [
        r.get("dispatcher_hwm_kb", 0) / 1024
        for key in ("throughput_bridge", "history_bridge")
        for r in raw.get(key, [])
    ]
    if peaks:
        rows.append(
            Row(
                "5 memory",
                "dispatcher MB, scen. 1/3",
                max(peaks),
                None,
                None,
                "<= 150 MB",
                verdict(max(peaks) <= MEMORY_LIMIT_MB),
                note="highest dispatcher VmHWM over the throughput/history runs",
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    server = PrivateRedis().start()
    client = redis.Redis.from_url(server.url)
    env = Env(args=args, redis=server, client=client, scratch=scratch)
    config = {
        "tasks": args.tasks,
        "chain": args.chain,
        "history": args.history,
        "bulk": args.bulk,
        "memory_tasks": args.memory_tasks,
        "memory_graph": args.memory_graph,
        "memory_seconds": args.memory_seconds,
        "repeat": args.repeat,
        "worker_class": args.worker_class,
        "slots": args.slots,
        "quick": args.quick,
        "scenarios": sorted(args.only),
    }
    print(
        f"bridge benchmark: worker class {args.worker_class}, BRIDGE_SLOTS={args.slots},"
        f" repeat {args.repeat}, redis {server.url}, rq {rq.__version__},"
        f" python {platform.python_version()}, {os.cpu_count()} cpu(s)",
        file=sys.stderr,
    )
    try:
        results = run(env)
    finally:
        client.close()
        server.stop()
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - began
    print()
    print(
        f"bridge vs plain RQ — worker class: {args.worker_class}, BRIDGE_SLOTS={args.slots},"
        f" repeat={args.repeat} (medians), cpus={os.cpu_count()}, total {elapsed:.0f}s"
    )
    print(
        f"sizes: --tasks {args.tasks} --chain {args.chain} --history {args.history}"
        f" --bulk {args.bulk} --memory-tasks {args.memory_tasks}"
        f" --memory-graph {args.memory_graph} --memory-seconds {args.memory_seconds:g}"
    )
    print_table(sorted(results.rows, key=lambda r: r.scenario[:1]))
    failed = [r.scenario for r in results.rows if r.verdict == "ERROR"]
    noise = noise_summary(results.raw)
    if noise:
        print(
            f"background: other processes used {noise['other_cores_median']:.2f} cores"
            f" (median; max {noise['other_cores_max']:.2f}) of {os.cpu_count()} during the timed"
            f" windows, steal {noise['steal_cores_median']:.2f}"
            + (
                "  <- NOISY: rerun on an idle machine"
                if noise["other_cores_median"] > QUIET
                else ""
            )
        )
    payload = {
        "config": config,
        "elapsed_seconds": round(elapsed, 2),
        "background": noise,
        "results": [r.__dict__ for r in results.rows],
        "runs": results.raw,
    }
    print("BENCH_JSON " + json.dumps(payload, separators=(",", ":")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
