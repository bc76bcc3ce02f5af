"""Data at the edges: handler output and errors over BRIDGE_MAX_OUTPUT, and task ids full of
quotes, newlines, unicode and SQL, through a real run."""

import json

import pytest
from faultlib import Fleet, add_graph, bridge_all, outcome, record_task, tasks

pytestmark = pytest.mark.both_backends

MAX_OUTPUT = 4096
MARKER = "[truncated"

ODD_IDS = [
    'it\'s "quoted"',
    "two\nlines",
    "tab\there",
    "ünïcødé 日本語 🚀",
    "x'); DROP TABLE tasks;--",
    '" OR 1=1 --',
    "%s %(x)s {0} $1 ?",
    "back\\slash/and/slash",
    " leading and trailing ",
]


def test_oversize_output_is_truncated_with_a_marker(
    tmp_path, fault_env, db_url, processes, fault_table
):
    # Given handlers whose output or error is far over BRIDGE_MAX_OUTPUT
    log = tmp_path / "runs.log"
    graph = [
        record_task("big-string", log, kind="big_output", size=50_000, shape="string"),
        record_task("big-unicode", log, kind="big_output", size=50_000, shape="unicode"),
        record_task("big-list", log, kind="big_output", size=50_000, shape="list"),
        record_task("big-error", log, kind="big_error", size=50_000),
    ]
    expected = {"big-error": "failed"}
    env = {**fault_env, "BRIDGE_MAX_OUTPUT": str(MAX_OUTPUT), "BRIDGE_WORKER_CLASS": "simple"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    fleet.start("dispatch")
    fleet.start("worker", "--quiet")
    # When they run
    try:
        fleet.wait_done(db_url, timeout=30, expected=expected)
    finally:
        result = outcome(db_url, log, graph, expected=expected)
        fault_table.add(
            "9a output/error > max-output",
            tasks=result.tasks,
            faults=0,
            lost=result.lost,
            repeated=result.repeated,
            recover=None,
            note=f"BRIDGE_MAX_OUTPUT={MAX_OUTPUT}",
        )
    # Then each is stored cut to the limit, with a marker, and ran exactly once
    assert result.lost == 0 and result.repeated == 0, processes.logs()
    final = tasks(db_url)
    for task_id in ("big-string", "big-unicode", "big-list"):
        stored = final[task_id]["output"]
        assert MARKER in stored, task_id
        assert len(stored.encode()) <= MAX_OUTPUT, (task_id, len(stored.encode()))
    error = final["big-error"]["error"]
    assert error.startswith("RuntimeError: EEE") and MARKER in error
    assert len(error.encode()) <= MAX_OUTPUT
    # And the output column still holds JSON (a string that carries the marker)
    for task_id in ("big-string", "big-unicode", "big-list"):
        value = json.loads(final[task_id]["output"])
        assert isinstance(value, str) and MARKER in value, task_id


def test_odd_ids_round_trip_through_a_real_run(tmp_path, fault_env, db_url, processes, fault_table):
    # Given tasks whose ids hold quotes, newlines, unicode and SQL, each one depending
    # on the one before
    log = tmp_path / "runs.log"
    graph = [
        record_task(task_id, log, name=f"odd{n}", value=task_id, deps=[ODD_IDS[n - 1]] if n else [])
        for n, task_id in enumerate(ODD_IDS)
    ]
    env = {**fault_env, "BRIDGE_WORKER_CLASS": "simple"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    fleet.start("dispatch")
    fleet.start("worker", "--quiet")
    # When they run
    try:
        fleet.wait_done(db_url, timeout=30)
    finally:
        result = outcome(db_url, log, graph)
        fault_table.add(
            "9b odd ids round trip",
            tasks=result.tasks,
            faults=0,
            lost=result.lost,
            repeated=result.repeated,
            recover=None,
            note="quotes, newlines, unicode, SQL",
        )
    # Then every id comes back exactly, done, with its output, in order, run once
    assert result.lost == 0 and result.repeated == 0, processes.logs()
    listed, *shown, trail, missing = bridge_all(
        ["list", "--json"],
        *(["show", task_id, "--json"] for task_id in (ODD_IDS[1], ODD_IDS[3], ODD_IDS[4])),
        ["events", "--json"],
        ["show", "x"],
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    listed = json.loads(listed.stdout)
    assert [t["id"] for t in listed] == ODD_IDS
    for n, task in enumerate(listed):
        assert task["status"] == "done"
        assert task["output"] == {"name": f"odd{n}", "value": ODD_IDS[n]}
        assert task["dependencies"] == ([ODD_IDS[n - 1]] if n else [])
    # And the CLI finds them by their ids, and their audit trails are their own
    for task_id, result in zip((ODD_IDS[1], ODD_IDS[3], ODD_IDS[4]), shown, strict=True):
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["id"] == task_id
    assert {e["task_id"] for e in json.loads(trail.stdout)} == set(ODD_IDS)
    assert missing.returncode != 0  # and nothing else was touched
