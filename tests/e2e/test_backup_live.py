"""A backup taken while a real dispatcher and two workers run a 2,000-task graph is a
consistent snapshot, and a fresh database restored from it is finished by a dispatcher:
the tasks that were in flight in the snapshot are sent again by its reconciliation."""

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from backup_helpers import lines
from helpers import bridge, bridge_json, query, wait_until

from bridge import graph, store
from bridge.redis_server import PrivateRedis

LAYERS, WIDTH = 20, 100
"""2,000 no-op tasks: each task of a layer waits for two of the layer before it."""


def layered_graph() -> list[dict]:
    return [
        {
            "id": f"L{layer:02}-{i:03}",
            "kind": "noop",
            "dependencies": []
            if layer == 0
            else [f"L{layer - 1:02}-{i:03}", f"L{layer - 1:02}-{(i + 1) % WIDTH:03}"],
        }
        for layer in range(LAYERS)
        for i in range(WIDTH)
    ]


@pytest.fixture
def second_redis():
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.stop()


def done_count(db: Path) -> int:
    return query(db, "SELECT COUNT(*) FROM tasks WHERE status = 'done'")[0][0]


def test_backup_of_a_running_graph_restores_and_a_dispatcher_finishes_it(
    tmp_path, bridge_env, db_path, processes, second_redis
):
    # Given a dispatcher and two workers running a 2,000-task graph
    env = {**bridge_env, "BRIDGE_WORKER_CLASS": "simple", "BRIDGE_SLOTS": "8"}
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(json.dumps(layered_graph()))
    assert bridge("add", "--file", str(graph_file), env=env).returncode == 0
    running = [
        processes.start("dispatch", env=env),
        processes.start("worker", "--quiet", env=env),
        processes.start("worker", "--quiet", env=env),
    ]
    wait_until(lambda: done_count(db_path) >= 300, timeout=60)
    # When a backup is taken while they keep going (again if it caught the instant between
    # two ticks when nothing is in flight: the restore must have in-flight tasks to resolve)
    snapshot = tmp_path / "live.bridge.gz"
    for _ in range(8):
        started = time.monotonic()
        taken = bridge("db", "backup", str(snapshot), env=env)
        took = time.monotonic() - started
        assert taken.returncode == 0, taken.stderr
        items = lines(snapshot)
        tasks = {i["row"]["id"]: i["row"] for i in items if i.get("table") == "tasks"}
        in_flight = {i for i, t in tasks.items() if t["status"] in ("queued", "working")}
        if in_flight:
            break
    # Then the snapshot is of the graph mid-run...
    edges = [i["row"] for i in items if i.get("table") == "task_edges"]
    events = [i["row"] for i in items if i.get("table") == "task_events"]
    states = Counter(t["status"] for t in tasks.values())
    assert len(tasks) == LAYERS * WIDTH and len(edges) == 2 * (LAYERS - 1) * WIDTH
    assert 300 <= states["done"] < len(tasks), states
    assert in_flight, states
    # ...and consistent: one moment of every table, though read in chunks over time
    deps: dict[str, list[str]] = {}
    for edge in edges:
        deps.setdefault(edge["task_id"], []).append(edge["depends_on"])
    for task_id, task in tasks.items():
        not_done = sum(1 for d in deps.get(task_id, []) if tasks[d]["status"] != "done")
        assert task["pending_deps"] == not_done, task_id
        if task["status"] != "available":
            assert not_done == 0, task_id
    last_event = {}
    for event in sorted(events, key=lambda e: e["id"]):
        last_event[event["task_id"]] = event["to_status"]
    assert last_event == {i: t["status"] for i, t in tasks.items()}
    # And the running graph was not held up: it goes on (then it is stopped, to free the CPU)
    wait_until(lambda: done_count(db_path) >= states["done"] + 200, timeout=30)
    for process in running:
        processes.stop(process)

    # When the backup is restored into a fresh database on a fresh Redis
    restored_db = tmp_path / "restored.db"
    env2 = {
        **env,
        "BRIDGE_DATABASE_URL": f"sqlite:///{restored_db}",
        "BRIDGE_REDIS_URL": second_redis.url,
    }
    restored = bridge("db", "restore", str(snapshot), env=env2)
    assert restored.returncode == 0, restored.stderr
    in_flight_after = query(
        restored_db, "SELECT id FROM tasks WHERE status IN ('queued', 'working')"
    )
    assert {row[0] for row in in_flight_after} == in_flight  # left as they were
    # And a dispatcher and two workers are started on it
    processes.start("dispatch", env=env2)
    processes.start("worker", "--quiet", env=env2)
    processes.start("worker", "--quiet", env=env2)
    waited = bridge("wait", "--timeout", "60", "--quiet", env=env2, timeout=90)
    # Then every task is done
    assert waited.returncode == 0, waited.stderr + processes.logs()
    assert done_count(restored_db) == LAYERS * WIDTH
    # And the tasks in flight in the snapshot were sent again by reconciliation
    resent = {
        row[0]
        for row in query(
            restored_db,
            "SELECT task_id FROM task_events WHERE detail LIKE 're-dispatched: its job was lost%'",
        )
    }
    assert resent == in_flight
    print(f"backup of a running 2,000-task graph took {took:.2f}s ({len(in_flight)} in flight)")


def test_moving_to_postgresql_as_the_readme_says_then_dispatching_there(
    tmp_path, bridge_env, db_url, processes, pg_url
):
    # Given a SQLite database with a graph half dispatched (tasks queued, jobs in a Redis
    # that the move leaves behind)
    specs = [
        graph.make_spec(task_id=f"m{i:02}", dependencies=[f"m{i - 1:02}"] if i % 4 else [])
        for i in range(40)
    ]
    engine = store.open_engine(db_url)
    try:
        with store.writing(engine) as session:
            store.add_tasks(session=session, specs=specs)
            store.reset_slots(session=session, slots=5)
            queued = {d.task_id for d in store.claim_ready(session=session, slots=5)}
    finally:
        engine.dispose()
    assert len(queued) == 5
    # When it is moved with the README's three commands
    env = {**bridge_env, "BRIDGE_WORKER_CLASS": "simple"}
    moved = tmp_path / "bridge-backup.jsonl.gz"
    assert bridge("db", "backup", str(moved), env=env).returncode == 0
    on_pg = {**env, "BRIDGE_DATABASE_URL": pg_url}
    restored = bridge("db", "restore", str(moved), env=on_pg)
    assert restored.returncode == 0, restored.stderr
    processes.start("dispatch", env=on_pg)
    processes.start("worker", "--quiet", env=on_pg)
    # Then the dispatcher on PostgreSQL sends the queued tasks again and finishes the graph
    waited = bridge("wait", "--timeout", "60", "--quiet", env=on_pg, timeout=90)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    tasks = {t["id"]: t for t in bridge_json("list", env=on_pg)}
    assert {t["status"] for t in tasks.values()} == {"done"} and len(tasks) == 40
    assert {t["id"] for t in tasks.values() if t["attempts"] == 2} == queued
