"""What every measured run stands on: a private Redis, scratch folders, child processes.

Nothing here knows a scenario. A run gets a sandbox (fresh folder, flushed Redis),
starts real processes through it, and every process is stopped when the sandbox
closes, whatever happened.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy.engine import URL, make_url

from bridge import store
from bridge.redis_server import PrivateRedis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BRIDGE = [sys.executable, "-m", "bridge"]
BRIDGE_QUEUE = "bench"
RQ_QUEUE = "rqbench"
RQ_NOOP = "rq_jobs.noop"
UNFINISHED = ("available", "queued", "working", "failed", "cancelled")
POLL = 0.05
"""Seconds between completion polls of the throughput runs (both sides alike)."""
CHAIN_POLL = 0.01
"""Chains finish in a second or two: poll finer so the poll does not dominate per-link numbers."""
READY_TIMEOUT = 30.0

Popen = subprocess.Popen


class BenchError(RuntimeError):
    """A run could not be measured (a process died, a task failed, a time limit passed)."""


class Processes:
    """Child processes of one run; each in its own session, its output in ``logdir``."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Popen[bytes]:
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
    def stop(proc: Popen[bytes], timeout: float = 15.0) -> int:
        """SIGTERM (warm shutdown), then SIGKILL of the process group we created."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
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


def _kill_group(proc: Popen[bytes]) -> None:
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


@dataclass
class Env:
    """What all runs share: options, the private Redis, a scratch directory."""

    args: argparse.Namespace
    redis: PrivateRedis
    client: redis.Redis
    scratch: Path
    databases: Databases
    counter: int = 0
    sandbox_dbs: list[BenchDb] = field(default_factory=list)
    """Databases made in the current sandbox: dropped when it closes, unless ``kept``."""
    loaded_db: BenchDb | None = None
    """Scenario 4's loaded bulk graph, handed to scenario 5b."""
    plans: dict[str, str] = field(default_factory=dict)
    """PostgreSQL: the planner's choices for the dispatcher's reads, by history size."""

    def base_env(self) -> dict[str, str]:
        """The parent's environment without BRIDGE_/RQ_ settings; ``rq_jobs`` importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "RQ_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def bridge_env(self, db: BenchDb, worker_class: str) -> dict[str, str]:
        env = self.base_env()
        env.update(
            BRIDGE_DATABASE_URL=db.url,
            BRIDGE_REDIS_URL=self.redis.url,
            BRIDGE_QUEUE=BRIDGE_QUEUE,
            BRIDGE_WORKER_CLASS=worker_class,
            BRIDGE_SLOTS=str(self.args.slots),
        )
        return env

    def redis_pid(self) -> int:
        return int(self.client.info("server")["process_id"])

    @contextmanager
    def sandbox(self, label: str) -> Iterator[tuple[Path, Processes]]:
        """A fresh folder and an empty Redis; every process started here is stopped after,
        and every database made here (``new_db``) is dropped, unless ``kept``."""
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
            for db in self.sandbox_dbs:
                if not db.kept:
                    self.databases.drop(db)
            self.sandbox_dbs.clear()
            if not self.args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            self.client.flushall()


class CommandMeter:
    """Redis commands run between ``__init__`` and ``stop`` (``INFO commandstats``).

    Round trips are what a job costs beyond its Python work. The benchmark's own
    commands (its completion polls and these reads) are left out.
    """

    OWN = frozenset({"info", "config|resetstat", "config", "zcard", "flushall"})

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        client.config_resetstat()

    def stop(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }
        return {name: count for name, count in calls.items() if name not in self.OWN}


# ------------------------------------------------------------------------------ starting


def spawn_bridge(
    env: Env,
    procs: Processes,
    db: BenchDb,
    workers: int,
    worker_class: str,
    extra_env: dict[str, str] | None = None,
) -> tuple[Popen[bytes], list[Popen[bytes]]]:
    """A real ``bridge dispatch`` and ``workers`` real ``bridge worker --quiet``; no waiting.

    ``extra_env`` goes to the dispatcher only (e.g. ``BRIDGE_RETENTION``)."""
    penv = env.bridge_env(db, worker_class)
    dispatcher = procs.start("dispatch", [*BRIDGE, "dispatch"], {**penv, **(extra_env or {})})
    started = [
        procs.start(f"worker{i + 1}", [*BRIDGE, "worker", "--quiet"], penv) for i in range(workers)
    ]
    return dispatcher, started


def wait_bridge_ready(
    env: Env, procs: Processes, db: BenchDb, watched: Sequence[Popen[bytes]], workers: int
) -> None:
    """Until the workers are registered and the dispatcher has rebuilt its slot table."""
    queue = Queue(BRIDGE_QUEUE, connection=env.client, serializer=JSONSerializer)
    wait_for(
        lambda: (
            Worker.count(connection=env.client, queue=queue) >= workers
            and _dispatcher_ready(db, env.args.slots)
        ),
        "bridge dispatcher and workers to start",
        watched,
        procs,
    )


def _dispatcher_ready(db: BenchDb, slots: int) -> bool:
    try:
        with db.connect() as conn:
            leases = conn.execute("SELECT count(*) FROM leases").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM worker_slots").fetchone()[0]
    except Exception:  # noqa: BLE001 - not there yet (sqlite3.Error, psycopg.Error)
        return False
    return leases >= 1 and rows >= slots


def spawn_rq_workers(
    env: Env, procs: Processes, workers: int, worker_class: str
) -> list[Popen[bytes]]:
    """``workers`` plain RQ workers (``rq_worker.py``), built as ``bridge worker`` builds its."""
    argv = [sys.executable, str(HERE / "rq_worker.py"), env.redis.url, RQ_QUEUE, worker_class]
    return [procs.start(f"rqworker{i + 1}", argv, env.base_env()) for i in range(workers)]


def wait_rq_ready(
    env: Env, procs: Processes, watched: Sequence[Popen[bytes]], workers: int
) -> None:
    queue = rq_queue(env)
    wait_for(
        lambda: Worker.count(connection=env.client, queue=queue) >= workers,
        "RQ workers to start",
        watched,
        procs,
    )


def rq_queue(env: Env) -> Queue:
    return Queue(RQ_QUEUE, connection=env.client, serializer=JSONSerializer)


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    watched: Sequence[Popen[bytes]],
    procs: Processes,
    timeout: float = READY_TIMEOUT,
    every: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if any(p.poll() is not None for p in watched):
            raise BenchError(f"a process died while waiting for {what}:\n{procs.logs()}")
        time.sleep(every)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}:\n{procs.logs()}")


# ------------------------------------------------------------------------------ databases

PREFIX = "bridge_bench_"
"""Name prefix of every database (or SQLite file) the benchmark makes, and drops after;
the full name is ``bridge_bench_<runner pid>_<random>``."""


@dataclass
class BenchDb:
    """One run's database: a fresh SQLite file, or a throwaway PostgreSQL database.

    ``url`` is what bridge's processes get as ``BRIDGE_DATABASE_URL``; ``connect``
    gives the runner its own DB-API connection (autocommit) for polling and setup,
    with ``?`` placeholders rewritten for the driver by ``sql``.
    """

    url: str
    name: str
    path: Path | None = None
    """The SQLite file; None on PostgreSQL."""
    kept: bool = False
    """Outlives its sandbox (scenario 4 hands its loaded database to 5b)."""

    @property
    def postgres(self) -> bool:
        return self.path is None

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def connect(self) -> Iterator[Any]:
        if self.path is not None:
            conn: Any = sqlite3.connect(str(self.path), timeout=30)
        else:
            import psycopg

            conn = psycopg.connect(libpq_url(make_url(self.url)), autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    def scalar(self, statement: str, params: Sequence[Any] = ()) -> Any:
        with self.connect() as conn:
            return conn.execute(self.sql(statement), tuple(params)).fetchone()[0]

    def backend_pids(self, conn: Any) -> list[int]:
        """PostgreSQL: the server processes serving this database, the runner's own left out."""
        if not self.postgres:
            return []
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        ).fetchall()
        return [int(r[0]) for r in rows]


def libpq_url(url: URL) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it (no ``+driver``)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Databases:
    """Where runs get their databases (``--database``).

    SQLite (the default, or any ``sqlite:`` URL): a new file per run in the scratch
    directory. PostgreSQL: the URL names a server and a database to connect to for
    administration only; every run gets a database ``bridge_bench_<pid>_<random>`` made
    on that server and dropped after it (``WITH (FORCE)``), so the databases already
    there are never read or written.
    """

    def __init__(self, url: str | None, scratch: Path) -> None:
        self.scratch = scratch
        self.server: URL | None = None
        self.made: dict[str, BenchDb] = {}
        if url is not None and make_url(url).get_backend_name() != "sqlite":
            server = make_url(url)
            if server.drivername == "postgresql":  # bridge's PostgreSQL driver: psycopg 3
                server = server.set(drivername="postgresql+psycopg")
            self.server = server

    @property
    def backend(self) -> str:
        return "sqlite" if self.server is None else "postgresql"

    def describe(self) -> str:
        if self.server is None:
            return "SQLite (a new file per run)"
        shown = self.server.render_as_string(hide_password=True)
        return f"PostgreSQL {self.version()} at {shown} (a new database per run)"

    def version(self) -> str:
        import psycopg

        assert self.server is not None
        with psycopg.connect(libpq_url(self.server), autocommit=True, connect_timeout=5) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]

    def check(self) -> None:
        """Fail early, with one line, when the PostgreSQL server cannot be used."""
        if self.server is None:
            return
        try:
            self.version()
        except Exception as exc:  # noqa: BLE001 - any reason is a reason to stop here
            shown = self.server.render_as_string(hide_password=True)
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise BenchError(f"cannot use PostgreSQL at {shown}: {first}") from None

    def new(self) -> BenchDb:
        """A new, empty database (no schema yet)."""
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        if self.server is None:
            path = self.scratch / "databases" / f"{name}.db"
            path.parent.mkdir(exist_ok=True)
            db = BenchDb(url=f"sqlite:///{path}", name=name, path=path)
        else:
            self._admin(f'CREATE DATABASE "{name}"')
            url = self.server.set(database=name).render_as_string(hide_password=False)
            db = BenchDb(url=url, name=name)
        self.made[name] = db
        return db

    def drop(self, db: BenchDb) -> None:
        if self.made.pop(db.name, None) is None:
            return
        if db.path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{db.path}{suffix}").unlink(missing_ok=True)
        else:
            self._admin(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')

    def drop_all(self) -> None:
        for db in list(self.made.values()):
            try:
                self.drop(db)
            except Exception as exc:  # noqa: BLE001 - go on dropping the others
                print(f"could not drop {db.name}: {exc}", file=sys.stderr)

    def _admin(self, statement: str) -> None:
        import psycopg

        assert self.server is not None
        with psycopg.connect(libpq_url(self.server), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)


def new_db(env: Env) -> tuple[BenchDb, Any]:
    """A fresh database with bridge's schema, and an engine on it; dropped with its sandbox."""
    db = env.databases.new()
    env.sandbox_dbs.append(db)
    return db, store.open_engine(db.url)


# ------------------------------------------------------------------------------ completion


def wait_bridge_done(
    db: BenchDb,
    watched: Sequence[Popen[bytes]],
    procs: Processes,
    timeout: float,
    every: float = POLL,
    prefix: str = "",
) -> tuple[float, float]:
    """Poll the database until no task whose id starts with ``prefix`` is unfinished.

    A prefix keeps the poll to the run's own tasks (a primary-key range), so that its
    cost does not grow with a history of finished tasks (scenario 3) on either side.
    Returns the ``perf_counter`` when the first task was seen done, and when all were.
    """
    deadline = time.monotonic() + timeout
    marks = ",".join("?" * len(UNFINISHED))
    first: float | None = None
    where = f"status IN ({marks})"
    params: tuple[str, ...] = UNFINISHED
    if prefix:
        where += " AND id >= ? AND id < ?"
        params += (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
    count_sql = db.sql(f"SELECT count(*) FROM tasks WHERE {where}")
    poll_sql = db.sql(f"SELECT status, count(*) FROM tasks WHERE {where} GROUP BY status")
    with db.connect() as conn:
        total = conn.execute(count_sql, params).fetchone()[0]
        while True:
            counts = dict(conn.execute(poll_sql, params).fetchall())
            now = time.perf_counter()
            if first is None and sum(counts.values()) < total:
                first = now
            if not counts:
                return first if first is not None else now, now
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
    watched: Sequence[Popen[bytes]],
    procs: Processes,
    timeout: float,
    every: float = POLL,
) -> tuple[float, float]:
    """Poll Redis until ``total`` jobs are in the finished registry.

    Returns the ``perf_counter`` when the first job was seen finished, and when all were.
    """
    queue = rq_queue(env)
    finished = FinishedJobRegistry(queue=queue).key
    failed = FailedJobRegistry(queue=queue).key
    deadline = time.monotonic() + timeout
    first: float | None = None
    while True:
        with env.client.pipeline(transaction=False) as pipe:
            pipe.zcard(finished)
            pipe.zcard(failed)
            done, bad = pipe.execute()
        now = time.perf_counter()
        if first is None and done:
            first = now
        if done >= total:
            return first if first is not None else now, now
        if bad:
            raise BenchError(f"{bad} RQ job(s) failed\n{procs.logs()}")
        if time.monotonic() > deadline:
            raise BenchError(f"RQ did not finish within {timeout:g}s: {done}/{total}")
        if any(p.poll() is not None for p in watched):
            raise BenchError(f"an RQ worker died\n{procs.logs()}")
        time.sleep(every)
