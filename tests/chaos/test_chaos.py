"""A seeded, randomized fault test (issue 7, section 5b).

A few hundred tasks of mixed kinds run on two dispatchers (one active, one standby)
and three forking workers while a fault driver, drawing from ``random.Random(seed)``,
SIGSTOPs and SIGKILLs dispatchers and workers (restarting the killed), holds SQLite's
write lock, restarts Redis (which loses everything), and cancels and retries tasks.
When the faults stop and every task has reached a final state (bounded wait), the
checker (``checker.py``) judges the whole history.

Seeds: ``CHAOS_SEED=7`` runs one seed, ``CHAOS_SEEDS=1-20`` (or ``1,4,9-12``) many;
by default one fixed seed runs, which is what CI does. Bounds (seconds, env):
``CHAOS_FAULT_SECONDS`` (75) of faults, ``CHAOS_SETTLE_SECONDS`` (90) to settle,
``CHAOS_TASKS`` (240) tasks. Every process is killed at the end, whatever happened.
``CHAOS_ARTIFACTS=DIR`` keeps a failed seed's database and logs in ``DIR/seed-N``.
"""

import os
import random
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from checker import check, read_history
from driver import FAULTS_DIR, Chaos, chaos_graph

from bridge.defaults import HEARTBEAT_EVERY, HEARTBEAT_TTL

if str(FAULTS_DIR) not in sys.path:
    sys.path.insert(0, str(FAULTS_DIR))

from faultlib import add_graph, calibrate_gil, holder_pid, journal_env  # noqa: E402

DEFAULT_SEED = 20261127
FAULT_SECONDS = float(os.environ.get("CHAOS_FAULT_SECONDS", "75"))
SETTLE_SECONDS = float(os.environ.get("CHAOS_SETTLE_SECONDS", "90"))
TASKS = int(os.environ.get("CHAOS_TASKS", "240"))
CONCURRENT_FAULTS = 2
PAUSE_LIMIT = HEARTBEAT_TTL - HEARTBEAT_EVERY
"""A worker paused longer than this may have lost its heartbeat key (its last renewal
came up to one interval before the pause): it may rightly be presumed dead."""


def seeds() -> list[int]:
    """``CHAOS_SEEDS`` (``1-20``, ``1,4,9-12``), else ``CHAOS_SEED``, else the default."""
    spec = os.environ.get("CHAOS_SEEDS") or os.environ.get("CHAOS_SEED") or str(DEFAULT_SEED)
    found: list[int] = []
    for part in spec.split(","):
        low, _, high = part.strip().partition("-")
        found += list(range(int(low), int(high or low) + 1))
    return found


@pytest.fixture(scope="module")
def gil_n_per_second() -> int:
    """``n`` for which ``sum(range(n))`` holds the GIL about one second here."""
    return calibrate_gil(1.0)


FAULT_WEIGHTS = {
    "stop_dispatcher": 3,
    "stop_worker": 3,
    "kill_dispatcher": 2,
    "kill_worker": 2,
    "lock": 2,
    "redis": 1,
    "cancel": 1,
    "retry": 1,
}


def plan(chaos: Chaos, kind: str) -> Callable[[], None] | None:
    """The fault of ``kind``, its parameters drawn now (so a seed replays its choices),
    or None if its target is busy with another fault."""
    rnd = chaos.rnd
    if kind in ("stop_dispatcher", "kill_dispatcher", "stop_worker", "kill_worker"):
        role = chaos.pick(kind.split("_")[1])
        if role is None:
            return None
        seconds = rnd.uniform(1, 25) if kind == "stop_dispatcher" else rnd.uniform(1, 15)

        def fault() -> None:
            try:
                if kind.startswith("stop"):
                    chaos.pause(role, seconds)
                else:
                    chaos.kill(role)
            finally:
                chaos.release(role)

        return fault
    if kind in ("lock", "redis"):
        role = "database" if kind == "lock" else "redis"
        with chaos.lock:
            if role in chaos.busy:
                return None
            chaos.busy.add(role)
        seconds = rnd.uniform(1, 16) if kind == "lock" else rnd.uniform(0.2, 3)

        def global_fault() -> None:
            try:
                if kind == "lock":
                    chaos.hold_lock(seconds)
                else:
                    chaos.restart_redis(seconds)
            finally:
                chaos.release(role)

        return global_fault
    history = read_history(chaos.db, Path("/nonexistent"), Path("/nonexistent"))
    if kind == "cancel":
        depended = {dep for _, dep in history.edges}
        open_ = sorted(
            t
            for t, row in history.tasks.items()
            if row["status"] in ("available", "queued", "working") and t not in depended
        )
        chosen = rnd.sample(open_, min(len(open_), rnd.randint(1, 3)))
    else:
        failed = sorted(t for t, row in history.tasks.items() if row["status"] == "failed")
        chosen = rnd.sample(failed, min(len(failed), rnd.randint(1, 3)))
    if not chosen:
        return None
    return lambda: chaos.cli(kind, chosen)


def drive(chaos: Chaos, seconds: float) -> None:
    """Apply random faults for ``seconds``, at most ``CONCURRENT_FAULTS`` at a time."""
    rnd = chaos.rnd
    kinds, weights = zip(*FAULT_WEIGHTS.items(), strict=True)
    threads: list[threading.Thread] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chaos.supervise()
        threads = [t for t in threads if t.is_alive()]
        if len(threads) < CONCURRENT_FAULTS:
            fault = plan(chaos, rnd.choices(kinds, weights)[0])
            if fault is not None:
                thread = threading.Thread(target=guarded(chaos, fault), daemon=True)
                thread.start()
                threads.append(thread)
        time.sleep(rnd.uniform(0.5, 3.0))
    for thread in threads:
        thread.join(timeout=60)
        if thread.is_alive():
            chaos.errors.append("a fault did not end within 60 s of the fault phase")
    chaos.resume_everything()


def guarded(chaos: Chaos, fault: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            fault()
        except Exception as exc:  # reported with the violations, never swallowed
            chaos.errors.append(f"fault {fault!r} raised {type(exc).__name__}: {exc}")

    return run


def settle(chaos: Chaos, journal: Path, fault_log: Path, seconds: float) -> float:
    """Until every task is final (or blocked by a failed or cancelled dependency), at most
    ``seconds``; the supervisor keeps restarting what exits. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        chaos.supervise()
        report = check(read_history(chaos.db, journal, fault_log), heartbeat_ttl=PAUSE_LIMIT)
        if not [v for v in report.violations if v.rule == "final"]:
            break
        time.sleep(1.0)
    return time.monotonic() - start


def fleet_up(chaos: Chaos, url: str) -> bool:
    """A dispatcher holds the lease and three workers are registered with RQ."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        workers = client.scard("rq:workers")
    except redis.RedisError:
        return False
    return holder_pid(chaos.db) is not None and workers >= 3


@pytest.mark.parametrize("seed", seeds())
def test_chaos(seed, tmp_path, bridge_env, db_path, redis_server, processes, gil_n_per_second):
    # Given a seeded graph of mixed tasks, two dispatchers and three forking workers
    rnd = random.Random(seed)
    journal = tmp_path / "journal.jsonl"
    fault_log = tmp_path / "faults.jsonl"
    env = {
        **journal_env({**bridge_env, "BRIDGE_HANDLERS": "chaos_handlers"}, journal),
        "BRIDGE_HANDLERS": "chaos_handlers",
        "BRIDGE_SLOTS": "12",
    }
    graph = chaos_graph(rnd, gil_n=gil_n_per_second, size=TASKS)
    add_graph(tmp_path, env, graph)
    chaos = Chaos(processes, env, db_path, redis_server, fault_log, rnd)
    replay = f"CHAOS_SEED={seed} python -m pytest -p no:cacheprovider tests/chaos/test_chaos.py"
    settled = 0.0
    try:
        for i in (1, 2):
            chaos.start(f"dispatcher-{i}", "dispatch")
        for i in (1, 2, 3):
            chaos.start(f"worker-{i}", "worker", "--quiet")
        up = time.monotonic()  # everyone up before the first fault (bounded wait)
        while time.monotonic() - up < 20 and not fleet_up(chaos, redis_server.url):
            time.sleep(0.2)
        # When the driver applies random faults for a while, then stops
        drive(chaos, FAULT_SECONDS)
        # And every task is given time to reach a final state
        settled = settle(chaos, journal, fault_log, SETTLE_SECONDS)
        time.sleep(3.0)  # a superseded attempt resumed late would start now
        chaos.supervise()
    finally:
        chaos.kill_everything()
    # Then the checker finds no violation in the whole history
    history = read_history(db_path, journal, fault_log)
    report = check(history, heartbeat_ttl=PAUSE_LIMIT)
    statuses = Counter(row["status"] for row in history.tasks.values())
    faults = ", ".join(f"{k} {n}" for k, n in sorted(chaos.counts.items()))
    print(
        f"chaos seed {seed}: {len(graph)} tasks {dict(statuses)}; faults: {faults};"
        f" settled in {settled:.0f}s; {len(report.excused)} excused, {len(report.blocked)} blocked"
    )
    problems = report.summary() if report.violations else ""
    keep = os.environ.get("CHAOS_ARTIFACTS")
    if keep and (problems or chaos.errors):  # pytest's tmp dirs are rotated away quickly
        shutil.copytree(tmp_path, Path(keep) / f"seed-{seed}", dirs_exist_ok=True)
    if chaos.errors:
        problems += "\ndriver errors: " + "; ".join(chaos.errors[:5])
    assert not problems, (
        f"chaos seed {seed} failed: {problems}\nfaults applied: {faults}\n"
        f"final statuses: {dict(statuses)}\nhistory: {tmp_path} (faults.jsonl, journal.jsonl,"
        f" proc-*.log, bridge.db)\nreplay: {replay}"
    )
