"""Shared helpers of the fault-injection suite: graphs, logs, processes, database reads.

A database is a SQLite file (``Path``) or a database URL (SQLite or PostgreSQL): the reads
go through ``helpers.query``, which takes either."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

FAULTS_DIR = Path(__file__).parent
TESTS_DIR = FAULTS_DIR.parent
for _extra in (TESTS_DIR, TESTS_DIR / "e2e"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

from graphs import mixed_graph  # noqa: E402
from helpers import BRIDGE, Processes, bridge, query, statuses  # noqa: E402


class ProcessExited(AssertionError):
    """A bridge process exited on its own during a scenario."""


class TaskEndedWrongly(AssertionError):
    """A task reached a final state other than the one expected."""


class GraphStuck(AssertionError):
    """The graph did not finish in time."""


def record_task(
    task_id: str,
    log: Path,
    *,
    name: str | None = None,
    kind: str = "record",
    sleep: float = 0.0,
    deps: Sequence[str] = (),
    max_attempts: int = 1,
    priority: int = 0,
    **payload: Any,
) -> dict[str, Any]:
    """A task whose handler appends a line named ``name`` (default: the id) to ``log``."""
    return {
        "id": task_id,
        "description": f"task {task_id}",
        "kind": kind,
        "payload": {"log": str(log), "name": name or task_id, "sleep": sleep, **payload},
        "dependencies": list(deps),
        "max_attempts": max_attempts,
        "priority": priority,
    }


def graph_from(log: Path, size: int, sleep: float = 0.0) -> list[dict[str, Any]]:
    """The e2e mixed graph (chains, fan-out, fan-in) of ``size`` record tasks."""
    return mixed_graph(log, size=size, sleep=sleep)


def add_graph(tmp_path: Path, env: dict[str, str], graph: list[dict[str, Any]]) -> None:
    path = tmp_path / f"graph-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(graph, ensure_ascii=False), encoding="utf-8")
    added = bridge("add", "--file", str(path), env=env)
    assert added.returncode == 0, added.stderr


def runs(log: Path) -> Counter:
    """Handler runs per name, from the record log (one line per run)."""
    if not log.exists():
        return Counter()
    return Counter(line.split(" ", 1)[0] for line in log.read_text().splitlines() if line)


def log_pids(log: Path, name: str) -> list[int]:
    """The pid of each run of ``name`` (the work-horse, for a forking worker)."""
    if not log.exists():
        return []
    return [
        int(line.split()[2])
        for line in log.read_text().splitlines()
        if line.split(" ", 1)[0] == name
    ]


def epoch(moment: str) -> float:
    """A store timestamp (UTC text) as seconds since the epoch."""
    return (
        datetime.strptime(moment, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
    )


def tasks(db: Path | str) -> dict[str, dict[str, Any]]:
    rows = query(
        db, "SELECT id, status, attempts, failures, error, output, job_id, worker FROM tasks"
    )
    keys = ("id", "status", "attempts", "failures", "error", "output", "job_id", "worker")
    return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}


def events(db: Path | str, task_id: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT task_id, from_status, to_status, attempt, at, detail FROM task_events"
    params: tuple = ()
    if task_id is not None:
        sql += " WHERE task_id = ?"
        params = (task_id,)
    keys = ("task_id", "from", "to", "attempt", "at", "detail")
    return [dict(zip(keys, row, strict=True)) for row in query(db, sql + " ORDER BY id", *params)]


def lease(db: Path | str) -> tuple[str, float] | None:
    try:
        rows = query(db, "SELECT holder, expires_at FROM leases")
    except Exception:  # table not created yet
        return None
    return (rows[0][0], rows[0][1]) if rows else None


def holder_pid(db: Path | str) -> int | None:
    """The pid in the lease holder's name (``host:pid:nonce``), if a lease is held."""
    held = lease(db)
    if held is None or held[1] < time.time():
        return None
    return int(held[0].split(":")[-2])


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc (no psutil)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


class Fleet:
    """The bridge processes of a scenario: started, watched, and (as a supervisor would)
    restarted when one exits, if the scenario allows it."""

    def __init__(self, processes: Processes, env: dict[str, str]) -> None:
        self.processes = processes
        self.env = env
        self.members: list[tuple[tuple[str, ...], dict[str, str], subprocess.Popen]] = []
        self.restarts = 0

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        env = env or self.env
        process = self.processes.start(*args, env=env)
        self.members.append((args, env, process))
        return process

    def forget(self, process: subprocess.Popen) -> None:
        """Stop watching a process (the test stops or kills it on purpose)."""
        self.members = [m for m in self.members if m[2] is not process]

    def replace(self, process: subprocess.Popen) -> subprocess.Popen:
        """Start again what ``process`` ran (after the test killed it)."""
        args, env, _ = next(m for m in self.members if m[2] is process)
        self.forget(process)
        return self.start(*args, env=env)

    def stop_all(self) -> None:
        """SIGTERM every process still watched and wait for it (a clean shutdown)."""
        for _, _, process in self.members:
            process.send_signal(signal.SIGTERM)
        for _, _, process in self.members:
            process.wait(timeout=30)
        self.members = []

    def exited(self) -> list[subprocess.Popen]:
        return [p for _, _, p in self.members if p.poll() is not None]

    def all_alive(self) -> bool:
        return not self.exited()

    def wait_done(
        self,
        db: Path | str,
        *,
        timeout: float = 60,
        expected: dict[str, str] | None = None,
        supervise: bool = False,
    ) -> float:
        """Until every task is in its expected final state (default ``done``).

        Fails fast, with the logs, when a task ends in another final state or a
        process exits (unless ``supervise``: then it is restarted, as systemd or
        a container runtime would). Returns the seconds waited.
        """
        expected = expected or {}
        start = time.monotonic()
        while True:
            states = statuses(db)
            if states and all(s == expected.get(t, "done") for t, s in states.items()):
                return time.monotonic() - start
            wrong = {
                t: s
                for t, s in states.items()
                if s in ("done", "failed", "cancelled") and s != expected.get(t, "done")
            }
            if wrong:
                raise TaskEndedWrongly(f"tasks ended wrongly: {wrong}\n{self.processes.logs()}")
            for process in self.exited():
                if not supervise:
                    raise ProcessExited(
                        f"process {process.args[3:]} exited with {process.returncode}\n"
                        + self.processes.logs()
                    )
                self.restarts += 1
                self.replace(process)
            if time.monotonic() - start > timeout:
                summary = Counter(states.values())
                raise GraphStuck(
                    f"graph not finished after {timeout}s: {dict(summary)}\n"
                    + in_flight_report(db, self.env["BRIDGE_REDIS_URL"])
                    + self.processes.logs()
                )
            time.sleep(0.1)


def in_flight_report(db: Path | str, url: str) -> str:
    """Each task in flight, as the database and as Redis/RQ see it (for failure messages)."""
    lines = []
    try:
        client = redis_client(url)
        for task_id, row in tasks(db).items():
            if row["status"] not in ("queued", "working") or not row["job_id"]:
                continue
            job = row["job_id"]
            fields = client.hmget(f"rq:job:{job}", "status", "worker_name", "started_at")
            places = [
                key.decode()
                for key in client.keys("rq:*")
                if client.type(key) == b"list" and job.encode() in client.lrange(key, 0, -1)
            ]
            places += [
                key.decode()
                for key in client.keys("rq:*")
                if client.type(key) == b"zset"
                and any(m.split(b":")[0] == job.encode() for m in client.zrange(key, 0, -1))
            ]
            lines.append(f"{task_id!r} {row['status']} attempt {row['attempts']} job {job}:")
            lines.append(f"    rq status/worker/started {fields}; in {places}")
    except Exception as exc:  # diagnostics only
        lines.append(f"(no Redis view: {exc})")
    return "in flight:\n" + "\n".join(lines) + "\n"


@dataclass
class Outcome:
    tasks: int
    lost: int
    repeated: int
    counts: Counter
    final: dict[str, dict[str, Any]]


def outcome(
    db: Path | str,
    log: Path,
    graph: Iterable[dict[str, Any]],
    expected: dict[str, str] | None = None,
    not_run: Iterable[str] = (),
) -> Outcome:
    """Compare the database with the graph: a task is lost if it is missing, not in its
    expected final state (default ``done``), or never ran although it should have
    (``not_run``: tasks that must not run, or whose handler keeps no log)."""
    specs = list(graph)
    final = tasks(db)
    counts = runs(log)
    expected = expected or {}
    skip = set(not_run)
    lost = 0
    for spec in specs:
        row = final.get(spec["id"])
        name = spec["payload"]["name"]
        if row is None or row["status"] != expected.get(spec["id"], "done"):
            lost += 1
        elif spec["id"] not in skip and counts[name] == 0:
            lost += 1
    repeated = sum(1 for spec in specs if counts[spec["payload"]["name"]] > 1)
    return Outcome(len(specs), lost, repeated, counts, final)


def reports_stream(client: redis.Redis) -> str:
    """The report stream of the test's database (``bridge:<namespace>:reports``)."""
    for key in client.scan_iter("bridge:*:reports"):
        return _text(key)
    return "bridge:none:reports"


REPORTS_GROUP = "dispatchers"


def pending_reports(client: redis.Redis) -> set[bytes]:
    """Ids of reports a dispatcher read from the stream but has not acknowledged."""
    try:
        rows = client.xpending_range(reports_stream(client), REPORTS_GROUP, "-", "+", 100_000)
    except redis.ResponseError:  # no stream or group yet
        return set()
    return {row["message_id"] for row in rows}


def consumers(client: redis.Redis) -> list[tuple[str, int]]:
    """The report stream's consumers (dispatcher names) with their unacknowledged counts."""
    try:
        rows = client.xinfo_consumers(reports_stream(client), REPORTS_GROUP)
    except redis.ResponseError:
        return []
    return [(_text(row["name"]), int(row["pending"])) for row in rows]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def freeze_and_kill(
    process: subprocess.Popen,
    client: redis.Redis,
    *,
    holding: bool | None,
    rnd: Any,
    stale: set[bytes] | frozenset[bytes] = frozenset(),
    tries: int = 2000,
) -> set[bytes]:
    """SIGKILL a dispatcher, first frozen with SIGSTOP to see what it holds.

    ``holding`` True: only at a moment it has read reports it has not acknowledged
    (between its read and its commit); False: only when it holds none; None: now.
    Reports in ``stale`` (left by an earlier dispatcher) do not count. Returns the
    ids of the reports it held when it died.
    """
    for _ in range(tries):
        os.kill(process.pid, signal.SIGSTOP)
        held = pending_reports(client) - set(stale)
        if holding is None or bool(held) == holding:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            return held
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(rnd.uniform(0.0, 0.01))
    raise AssertionError(f"no moment with holding={holding} in {tries} tries")


def bridge_all(*commands: Sequence[str], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Run several CLI commands at once (each is a Python start-up: this saves seconds)."""
    started = [
        subprocess.Popen(
            [*BRIDGE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    done = []
    for args, process in zip(commands, started, strict=True):
        out, err = process.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(list(args), process.returncode, out, err))
    return done


# ------------------------------------------------------------------ pauses and journals

CHAOS_DIR = TESTS_DIR / "chaos"
JOURNAL_ENV = "CHAOS_HANDLER_LOG"
"""Names the journal the handlers of ``tests/chaos/chaos_handlers.py`` append to."""


def journal_env(env: dict[str, str], journal: Path) -> dict[str, str]:
    """``env`` plus the journaling handlers of ``tests/chaos`` and the journal's path."""
    return {
        **env,
        "BRIDGE_HANDLERS": env["BRIDGE_HANDLERS"] + ",chaos_handlers",
        "PYTHONPATH": os.pathsep.join([str(CHAOS_DIR), env["PYTHONPATH"]]),
        JOURNAL_ENV: str(journal),
    }


def journal_lines(journal: Path) -> list[dict[str, Any]]:
    """The handlers' start and end lines (a torn last line is skipped)."""
    if not journal.exists():
        return []
    lines = []
    for text in journal.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def journal_starts(journal: Path) -> Counter:
    """Handler starts per task id."""
    return Counter(line["task"] for line in journal_lines(journal) if line["event"] == "start")


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (a forking worker and its work horse, which RQ puts in
    a process group of its own, so a signal to the worker's group misses it)."""
    found = [pid]
    for child in children(pid):
        found += family(child)
    return found


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class WriteLock:
    """Another process holding SQLite's write lock (``BEGIN IMMEDIATE``) for ``seconds``,
    then rolling back: the database is unchanged, only unwritable meanwhile."""

    SCRIPT = (
        "import sqlite3, sys, time\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "print('locked', time.time(), flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "conn.execute('ROLLBACK')\n"
        "print('released', time.time(), flush=True)\n"
    )

    def __init__(self, db: Path, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(db), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline().split()  # blocks until the lock is held
        if not line or line[0] != "locked":
            self.process.kill()
            raise AssertionError("could not take the database's write lock")
        self.taken = float(line[1])
        self.released: float | None = None

    def wait(self, timeout: float = 120) -> float:
        """Until it rolled back; returns the moment it did."""
        line = self.process.stdout.readline().split()
        self.process.wait(timeout=timeout)
        self.released = float(line[1]) if line else time.time()
        return self.released

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def calibrate_gil(seconds: float) -> int:
    """An ``n`` for which ``sum(range(n))`` (one C call, the GIL held throughout) takes
    about ``seconds`` of CPU on this machine, measured now.

    Measured in CPU time, not wall time: a calibration slowed by other processes (a
    parallel test run) would otherwise give an ``n`` that finishes early once they stop;
    a CPU-second is at least a wall-clock second, so the call lasts at least ``seconds``.
    """
    n = 2_000_000
    while True:
        start = time.process_time()
        sum(range(n))
        took = time.process_time() - start
        if took > 0.5:
            return int(n * seconds / took)
        n *= 4


def longest_tick_gap(n: int) -> tuple[float, float]:
    """Run ``sum(range(n))`` while a thread ticks every 5 ms: (the call's duration, the
    longest gap between ticks). A gap about as long as the call shows the GIL was held."""
    import threading

    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    time.sleep(0.05)
    start = time.perf_counter()
    sum(range(n))
    took = time.perf_counter() - start
    time.sleep(0.05)
    stop.set()
    thread.join(timeout=5)
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    return took, max(gaps, default=0.0)


def worker_lost(db: Path | str) -> list[dict[str, Any]]:
    """Events whose detail names WorkerLost."""
    return [e for e in events(db) if "WorkerLost" in (e["detail"] or "")]


def ignored(db: Path | str) -> list[dict[str, Any]]:
    """Events of reports the database ignored (stale attempt, unknown task...)."""
    return [e for e in events(db) if (e["detail"] or "").startswith("ignored")]
