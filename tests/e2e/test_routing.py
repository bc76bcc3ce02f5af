"""Queues, pools and delays end to end: the real CLI, a real dispatcher, real workers,
real Redis and SQLite."""

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers import bridge, bridge_json, query, statuses, wait_until


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at the same moment (an end before a start
    at the same instant)."""
    marks = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in marks:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.both_backends
def test_a_pool_of_two_is_never_exceeded_while_twenty_tasks_compete(
    tmp_path, bridge_env, db_url, processes
):
    # Given a pool of 2, and 20 tasks of it plus 4 plain ones, all ready at once
    env = {**bridge_env, "BRIDGE_SLOTS": "8", "BRIDGE_WORKER_CLASS": "simple"}
    runs = tmp_path / "spans"
    runs.mkdir()
    assert bridge("pool", "set", "api", "2", env=env).returncode == 0
    graph = [
        {
            "id": f"api{i}",
            "kind": "timed_span",
            "pool": "api",
            "payload": {"dir": str(runs), "name": f"api{i}", "sleep": 0.3},
        }
        for i in range(20)
    ] + [
        {
            "id": f"plain{i}",
            "kind": "timed_span",
            "payload": {"dir": str(runs), "name": f"plain{i}", "sleep": 0.3},
        }
        for i in range(4)
    ]
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    added = bridge("add", "--file", str(path), env=env)
    assert added.returncode == 0, added.stderr
    # When a dispatcher with 8 slots and 4 workers run them
    processes.start("dispatch", env=env)
    for n in range(4):
        processes.start("worker", "--quiet", "--name", f"w{n}", env=env)
    waited = bridge("wait", "--timeout", "120", "--quiet", env=env, timeout=150)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    # Then every task ran once
    assert set(statuses(db_url).values()) == {"done"}
    assert len(list(runs.iterdir())) == 24
    # And the pool's tasks never ran more than 2 at once, but did run 2 at once
    api = spans(runs, "api")
    assert len(api) == 20
    assert most_at_once(api) == 2
    # And the plain tasks were not held back behind the pool: they all ran alongside it
    plain = spans(runs, "plain")
    assert max(end for _, end in plain) < max(end for _, end in api)
    # And the pool is empty again
    (pool,) = bridge_json("pool", "list", env=env)
    assert pool == {"name": "api", "slots": 2, "in_flight": 0, "waiting": 0}


def spans(folder: Path, prefix: str) -> list[tuple[float, float]]:
    """(start, end) of every run of a task whose id starts with ``prefix``, as the
    ``timed_span`` handler recorded it."""
    found = []
    for path in [p for p in folder.iterdir() if p.name.startswith(prefix)]:
        parts = {line.split()[0]: float(line.split()[2]) for line in path.read_text().splitlines()}
        found.append((parts["start"], parts["end"]))
    return found


def test_a_task_routed_to_a_queue_runs_only_on_a_worker_of_that_queue(
    tmp_path, bridge_env, db_url, processes
):
    # Given a dispatcher and one worker on the default queue
    log = tmp_path / "runs.log"
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--name", "default-w", env=bridge_env)
    # When a task is routed to queue 'gpu' and another to the default queue
    payload = json.dumps({"log": str(log), "name": "gpu-task"})
    routed = bridge(
        "add",
        "gpu-task",
        "--kind",
        "record",
        "--payload",
        payload,
        "--queue",
        "gpu",
        env=bridge_env,
    )
    assert routed.returncode == 0, routed.stderr
    plain = json.dumps({"log": str(log), "name": "plain-task"})
    added = bridge("add", "plain", "--kind", "record", "--payload", plain, env=bridge_env)
    assert added.returncode == 0, added.stderr
    wait_until(lambda: statuses(db_url) == {"gpu-task": "queued", "plain": "done"}, timeout=60)
    # Then the default worker never runs it: it stays queued on 'gpu'
    time.sleep(2)
    assert statuses(db_url)["gpu-task"] == "queued"
    assert query(db_url, "SELECT queue FROM tasks WHERE id = 'gpu-task'") == [("gpu",)]
    # And show says why, and status warns about the queue with its task count
    shown = bridge_json("show", "gpu-task", env=bridge_env)
    assert shown["why"] == "queued on 'gpu': no live worker serves that queue"
    status = bridge("status", env=bridge_env)
    assert status.returncode == 0, status.stderr
    assert "warning: queue 'gpu': 1 task(s) wait and no live worker serves that queue" in (
        status.stderr
    )
    assert bridge_json("status", env=bridge_env)["unserved_queues"] == {"gpu": 1}
    # When a second worker listening to 'gpu' (and another queue) starts
    processes.start(
        "worker", "--queue", "gpu", "--queue", "other", "--name", "gpu-w", env=bridge_env
    )
    wait_until(lambda: statuses(db_url)["gpu-task"] == "done", timeout=60)
    # Then that worker ran it, the default one ran only the plain task
    workers = dict(query(db_url, "SELECT id, worker FROM tasks"))
    assert workers == {"gpu-task": "gpu-w", "plain": "default-w"}
    assert [line.split()[0] for line in log.read_text().splitlines()].count("gpu-task") == 1
    # And status has nothing more to say about queues, and shows both workers
    status = bridge_json("status", env=bridge_env)
    assert status["unserved_queues"] == {}
    assert {w["name"]: w["queues"] for w in status["workers"]} == {
        "default-w": ["bridge"],
        "gpu-w": ["gpu", "other"],
    }


def test_a_delayed_task_is_not_started_early_and_is_started_after(
    tmp_path, bridge_env, db_url, processes
):
    # Given a running dispatcher and worker
    log = tmp_path / "runs.log"
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    # When tasks are added with --delay 5s, --not-before 6s from now, and --delay 1h
    before = time.time()
    soon = datetime.fromtimestamp(int(before) + 6, timezone.utc)
    delays = {
        "later": ["--delay", "5s"],
        "at": ["--not-before", soon.strftime("%Y-%m-%dT%H:%M:%SZ")],
        "far": ["--delay", "1h"],
    }
    for task_id, when in delays.items():
        payload = json.dumps({"log": str(log), "name": task_id})
        added = bridge(
            "add", task_id, "--kind", "record", "--payload", payload, *when, env=bridge_env
        )
        assert added.returncode == 0, added.stderr
    # Then show says until when, in UTC
    ((far,),) = query(db_url, "SELECT not_before FROM tasks WHERE id = 'far'")
    assert bridge_json("show", "far", env=bridge_env)["why"] == f"delayed until {far[:19]} UTC"
    # And the first two run once their time has come, without anything else waking the
    # dispatcher, but not before
    wait_until(lambda: statuses(db_url) == {"later": "done", "at": "done", "far": "available"})
    started = {line.split()[0]: float(line.split()[1]) for line in log.read_text().splitlines()}
    assert set(started) == {"later", "at"}
    assert started["later"] >= before + 5
    assert started["at"] >= soon.timestamp()
    # And the one delayed by an hour has still not been dispatched
    assert statuses(db_url)["far"] == "available"
