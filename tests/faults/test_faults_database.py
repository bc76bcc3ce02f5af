"""Database faults: SQLite locked by another process for 2 s while the dispatcher works
and while CLI commands (add, list, retry) run."""

import json
import sqlite3
import subprocess
import threading
import time

from faultlib import Fleet, add_graph, epoch, events, graph_from, outcome, record_task
from helpers import BRIDGE, statuses, wait_until

LOCK_SECONDS = 2.0


class Lock:
    """Another process's exclusive write transaction on the SQLite file."""

    def __init__(self, db_path) -> None:
        self.conn = sqlite3.connect(db_path, isolation_level=None, timeout=30)

    def __enter__(self) -> "Lock":
        self.conn.execute("BEGIN EXCLUSIVE")
        self.taken = time.time()
        return self

    def __exit__(self, *exc) -> None:
        self.conn.execute("COMMIT")
        self.released = time.time()
        self.conn.close()


def _cli(*args: str, env) -> subprocess.Popen:
    return subprocess.Popen(
        [*BRIDGE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_locked_database_while_dispatching_and_during_cli_commands(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given a running graph, and a task that failed on its first run
    log = tmp_path / "runs.log"
    graph = graph_from(log, size=60, sleep=0.05)
    graph.append(record_task("flaky", log, kind="flaky"))
    env = {**fault_env, "BRIDGE_SLOTS": "4", "BRIDGE_WORKER_CLASS": "simple"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    fleet.start("dispatch")
    for _ in range(2):
        fleet.start("worker", "--quiet")
    wait_until(
        lambda: (
            statuses(db_path)["flaky"] == "failed"
            and list(statuses(db_path).values()).count("done") >= 10
        ),
        timeout=30,
    )
    # When another process holds the database's write lock for 2 s while the
    # dispatcher works
    with Lock(db_path) as first:
        time.sleep(LOCK_SECONDS)
    # Then the dispatcher waits, and goes on as soon as the lock is released
    wait_until(lambda: any(epoch(e["at"]) >= first.released for e in events(db_path)), timeout=10)
    resumed = min(epoch(e["at"]) for e in events(db_path) if epoch(e["at"]) >= first.released)
    assert fleet.all_alive(), processes.logs()
    # When add, list and retry run while the lock is held again
    extra = record_task("extra", log)
    commands = {
        "add": (
            "add",
            "extra",
            "--kind",
            "record",
            "--payload",
            json.dumps(extra["payload"]),
        ),
        "list": ("list", "--json"),
        "retry": ("retry", "flaky"),
    }
    timing: dict[str, float] = {}
    finished: dict[str, subprocess.CompletedProcess] = {}

    def run(name: str, args: tuple[str, ...]) -> None:
        start = time.monotonic()
        process = _cli(*args, env=env)
        out, err = process.communicate(timeout=60)
        timing[name] = time.monotonic() - start
        finished[name] = subprocess.CompletedProcess(args, process.returncode, out, err)

    with Lock(db_path):
        threads = [threading.Thread(target=run, args=item) for item in commands.items()]
        for thread in threads:
            thread.start()
        time.sleep(LOCK_SECONDS)
    for thread in threads:
        thread.join(timeout=60)
    # Then each command waits for the lock and succeeds: nothing says "database is locked"
    for name, done in finished.items():
        assert done.returncode == 0, (name, done.stderr)
        assert "database is locked" not in done.stderr + done.stdout, (name, done.stderr)
    assert len(finished) == 3
    assert "flaky" in {t["id"] for t in json.loads(finished["list"].stdout)}
    # And the graph finishes, with the added and the retried task done
    graph.append(extra)
    try:
        fleet.wait_done(db_path, timeout=60)
    finally:
        result = outcome(db_path, log, graph)
        fault_table.add(
            "7 SQLite locked 2 s (x2)",
            tasks=result.tasks,
            faults=2,
            lost=result.lost,
            repeated=result.repeated,
            recover=resumed - first.released,
            note="release -> dispatcher's next commit; CLI took "
            + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(timing.items())),
        )
    assert result.lost == 0, processes.logs()
    assert "database is locked" not in processes.logs()
    assert result.counts["flaky"] == 2 and result.repeated == 1  # its failed run, then the retry
