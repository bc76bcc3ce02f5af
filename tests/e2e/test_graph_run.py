"""End to end through the real CLI and real processes: dispatcher, 2 workers, wait."""

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from graphs import mixed_graph
from helpers import bridge, bridge_json, query, statuses, wait_until


def write_graph(tmp_path: Path, **kwargs) -> tuple[Path, Path, list[dict]]:
    log = tmp_path / "runs.log"
    graph = mixed_graph(log, **kwargs)
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    return path, log, graph


def runs(log: Path) -> Counter:
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines())


@pytest.mark.both_backends
def test_hundred_task_graph_runs_to_done_with_two_workers(tmp_path, bridge_env, db_url, processes):
    # Given a 100-task graph with chains, fan-out and fan-in
    path, log, graph = write_graph(tmp_path)
    added = bridge("add", "--file", str(path), env=bridge_env)
    assert added.returncode == 0, added.stderr
    # When a dispatcher and two worker processes run it
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    waited = bridge("wait", "--timeout", "120", "--quiet", env=bridge_env, timeout=150)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    # Then every task is done, ran exactly once, after all its dependencies completed
    tasks = {t["id"]: t for t in bridge_json("list", env=bridge_env)}
    assert len(tasks) == 100
    assert {t["status"] for t in tasks.values()} == {"done"}
    assert runs(log) == Counter({t["id"]: 1 for t in graph})
    for task in tasks.values():
        for dep in task["dependencies"]:
            assert tasks[dep]["completed_at"] <= task["started_at"], (dep, task["id"])
    # And outputs match what each handler returned
    for spec in graph:
        assert tasks[spec["id"]]["output"] == {
            "name": spec["id"],
            "value": spec["payload"]["value"],
        }
    # And both workers took part
    assert len({t["worker"] for t in tasks.values()}) == 2
    # And the events table holds each transition of each task
    transitions = Counter(
        (task, source, target)
        for task, source, target in query(
            db_url, "SELECT task_id, from_status, to_status FROM task_events"
        )
    )
    for task_id in tasks:
        for source, target in [
            (None, "available"),
            ("available", "queued"),
            ("queued", "working"),
            ("working", "done"),
        ]:
            assert transitions[(task_id, source, target)] == 1, (task_id, source, target)
    # And the slots are all free again
    assert all(not s["active"] for s in bridge_json("slots", env=bridge_env))


def test_stop_everything_mid_graph_then_resume(tmp_path, bridge_env, db_url, processes):
    # Given a graph of slow-ish tasks, half way through
    path, log, graph = write_graph(tmp_path, size=60, sleep=0.1)
    assert bridge("add", "--file", str(path), env=bridge_env).returncode == 0
    dispatcher = processes.start("dispatch", env=bridge_env)
    workers = [processes.start("worker", "--quiet", env=bridge_env) for _ in range(2)]
    wait_until(lambda: list(statuses(db_url).values()).count("done") >= 15, timeout=60)
    # When the dispatcher is killed outright and the workers are stopped
    dispatcher.send_signal(signal.SIGKILL)
    dispatcher.wait(timeout=10)
    for worker in workers:
        assert processes.stop(worker) == 0
    before = statuses(db_url)
    done_before = {t for t, s in before.items() if s == "done"}
    assert 15 <= len(done_before) < 60
    # Then the states are kept while nothing runs
    assert statuses(db_url) == before
    # And whatever the slot table says meanwhile (here: stale rows), it is not trusted
    query(db_url, "UPDATE worker_slots SET active = 1, task_id = 'ghost', worker_id = 'gone'")
    # When everything starts again
    dispatcher = processes.start("dispatch", env=bridge_env)

    # Then the slots are rebuilt from the tasks really in flight
    def slots_rebuilt() -> bool:
        active = {
            row[0] for row in query(db_url, "SELECT task_id FROM worker_slots WHERE active = 1")
        }
        flying = {
            row[0]
            for row in query(db_url, "SELECT id FROM tasks WHERE status IN ('queued', 'working')")
        }
        return active == flying

    wait_until(slots_rebuilt, timeout=30)
    for _ in range(2):
        processes.start("worker", "--quiet", env=bridge_env)
    waited = bridge("wait", "--timeout", "120", "--quiet", env=bridge_env, timeout=150)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    # And the graph finishes with no task lost, and done tasks were not run again
    after = statuses(db_url)
    assert set(after.values()) == {"done"}
    counts = runs(log)
    assert set(counts) == set(after)
    assert all(counts[t] == 1 for t in done_before)
    assert processes.stop(dispatcher) == 0
