"""Handlers that see their context, end to end: real CLI, dispatcher, worker, Redis and
SQLite. A fan-in sums its inputs; progress shows in ``bridge show`` while the handler
runs; ``bridge logs`` prints its ``ctx.log`` lines; a fan-in too large to send fails at
dispatch naming its largest dependency; plain handlers run beside them unchanged."""

import json
from pathlib import Path

from helpers import bridge, bridge_json, query, wait_until


def add_graph(tmp_path: Path, env: dict[str, str], tasks: list[dict]) -> None:
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(tasks))
    added = bridge("add", "--file", str(path), env=env)
    assert added.returncode == 0, added.stderr


def test_a_fan_in_handler_sums_its_inputs_beside_plain_handlers(tmp_path, bridge_env, processes):
    # Given three plain tasks, a context handler over their outputs, and a plain task after it
    add_graph(
        tmp_path,
        bridge_env,
        [
            {"id": "a", "kind": "echo", "payload": 1},
            {"id": "b", "kind": "echo", "payload": 2},
            {"id": "c", "kind": "echo", "payload": 39},
            {"id": "total", "kind": "fan_in_sum", "dependencies": ["a", "b", "c"]},
            {
                "id": "after",
                "kind": "sum_inputs",
                "payload": {"values": [1, 2]},
                "dependencies": ["total"],
            },
        ],
    )
    # When a dispatcher and a worker run the graph
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    waited = bridge("wait", "--timeout", "90", "--quiet", env=bridge_env, timeout=120)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    # Then the fan-in saw each dependency's output under its id, and summed them
    total = bridge_json("show", "total", env=bridge_env)
    assert total["output"]["sum"] == 42
    assert total["output"]["inputs"] == ["a", "b", "c"]
    assert total["output"]["task"] == "total"
    assert total["output"]["attempt"] == [1, 1]
    assert total["output"]["run"] == total["run"]
    # And the plain handler after it ran as it always did, on its payload alone
    assert bridge_json("show", "after", env=bridge_env)["output"] == 3


def test_progress_shows_while_running_and_logs_keep_the_attempts_lines(
    tmp_path, bridge_env, db_url, processes
):
    # Given a handler that reports progress and logs, then waits for a gate
    gate = tmp_path / "gate"
    add_graph(
        tmp_path,
        bridge_env,
        [
            {
                "id": "fetch",
                "kind": "progress_then_wait",
                "payload": {"url": "https://example.org/data", "gate": str(gate)},
            }
        ],
    )
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)

    # When it runs, bridge show says how far it is
    def shown() -> str:
        result = bridge("show", "fetch", env=bridge_env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    wait_until(lambda: "progress: 40% downloading" in shown(), timeout=60)
    data = bridge_json("show", "fetch", env=bridge_env)
    assert data["status"] in ("queued", "working")
    assert (data["progress"], data["progress_message"]) == (0.4, "downloading")
    # And bridge logs prints its lines while it runs
    wait_until(lambda: "fetching" in bridge("logs", "fetch", env=bridge_env).stdout, timeout=60)
    # When the handler finishes
    gate.write_text("go")
    waited = bridge("wait", "--timeout", "90", "--quiet", env=bridge_env, timeout=120)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    # Then bridge logs has every line of the attempt, in order, as <at> <LEVEL> attempt N: ...
    result = bridge("logs", "fetch", env=bridge_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO attempt 1: fetching https://example.org/data",
        "WARNING attempt 1: slow server",
    ]
    assert lines[0][:4].isdigit() and lines[0][4] == "-"
    as_json = bridge_json("logs", "fetch", "--attempt", "1", env=bridge_env)
    assert [(x["level"], x["attempt"]) for x in as_json] == [("INFO", 1), ("WARNING", 1)]
    assert bridge_json("logs", "fetch", "--attempt", "2", env=bridge_env) == []
    # And once done, show no longer talks of progress (the last one is kept in JSON)
    assert "progress:" not in shown()
    assert query(db_url, "SELECT progress FROM tasks WHERE id = 'fetch'") == [(1.0,)]


def test_logs_of_an_unknown_task_is_one_error_line(bridge_env):
    assert bridge("add", "t1", env=bridge_env).returncode == 0
    result = bridge("logs", "nope", env=bridge_env)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_fan_in_too_large_to_send_fails_at_dispatch_naming_the_dependency(
    tmp_path, bridge_env, db_url, processes
):
    # Given a fan-in over three outputs that together exceed a 1 MiB input limit
    env = {**bridge_env, "BRIDGE_MAX_INPUTS": "1048576"}
    add_graph(
        tmp_path,
        env,
        [
            {"id": "a", "kind": "sized_output", "payload": {"bytes": 700000}},
            {"id": "b", "kind": "sized_output", "payload": {"bytes": 800000}},
            {"id": "c", "kind": "sized_output", "payload": {"bytes": 600000}},
            {"id": "d", "kind": "fan_in_sum", "dependencies": ["a", "b", "c"]},
        ],
    )
    # When the graph runs
    processes.start("dispatch", env=env)
    processes.start("worker", "--quiet", env=env)
    waited = bridge("wait", "--timeout", "90", "--quiet", env=env, timeout=120)
    # Then wait stops on the fan-in, failed with one line naming the largest dependency
    assert waited.returncode == 1, waited.stderr + processes.logs()
    message = (
        "inputs too large: 'b' is 800002 bytes, the inputs total 2100006,"
        " over the limit of 1048576 (BRIDGE_MAX_INPUTS)"
    )
    assert f"d: failed ({message})" in waited.stderr
    shown = bridge_json("show", "d", env=env)
    assert shown["status"] == "failed" and shown["error"] == message
    # And it failed at dispatch: no attempt was made, no job was sent
    assert (shown["attempts"], shown["job_id"]) == (0, None)
    assert query(db_url, "SELECT to_status FROM task_events WHERE task_id = 'd'") == [
        ("available",),
        ("failed",),
    ]
