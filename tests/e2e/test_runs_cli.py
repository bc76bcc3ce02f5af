"""Runs, ``wait ID...``, ``delete`` and fractional timeouts through the real CLI, with a
real dispatcher and worker, real Redis and the database on both backends."""

import json
from pathlib import Path

import pytest
from helpers import bridge, bridge_json, file_digest, query, wait_until


def write(tmp_path: Path, name: str, tasks: list[dict]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return str(path)


def ok(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    result = bridge(*args, env=env, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def runs_by_name(env: dict[str, str]) -> dict[str, dict]:
    return {r["name"]: r for r in bridge_json("runs", env=env)}


@pytest.mark.both_backends
def test_one_graph_submitted_as_runs_waited_retried_and_deleted(
    tmp_path, bridge_env, db_url, processes
):
    pair = write(
        tmp_path,
        "pair.json",
        [
            {"id": "a", "kind": "echo", "payload": 1},
            {"id": "b", "kind": "echo", "dependencies": ["a"]},
        ],
    )
    # Given the same file submitted as two runs, and a taken name refused
    assert ok("submit", pair, "--run", "n1", env=bridge_env).strip() == "n1"
    assert ok("submit", pair, "--run", "n2", env=bridge_env).strip() == "n2"
    taken = bridge("submit", pair, "--run", "n1", env=bridge_env)
    assert taken.returncode == 1
    assert taken.stderr == "error: run 'n1' already exists\n"
    # When a dispatcher and a worker run them
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    # Then each run is waited for on its own and ends done
    for name in ("n1", "n2"):
        waited = bridge("wait", "--run", name, "--timeout", "90", "--quiet", env=bridge_env)
        assert waited.returncode == 0, waited.stderr + processes.logs()
    listed = runs_by_name(bridge_env)
    assert listed["n1"]["state"] == "done" and listed["n1"]["counts"] == {"done": 2}
    assert listed["n2"]["total"] == 2 and listed["n2"]["created_at"]
    tasks = bridge_json("list", "--run", "n2", env=bridge_env)
    assert [(t["id"], t["local_id"], t["status"]) for t in tasks] == [
        ("n2/a", "a", "done"),
        ("n2/b", "b", "done"),
    ]
    # A failing run: wait --run says 1 and names it; the run is failed
    boom = write(tmp_path, "boom.json", [{"id": "boom", "kind": "fail", "payload": "broken"}])
    ok("submit", boom, "--run", "bad", env=bridge_env)
    waited = bridge("wait", "--run", "bad", "--timeout", "60", "--quiet", env=bridge_env)
    assert waited.returncode == 1, waited.stderr + processes.logs()
    assert "bad/boom: failed (TaskFailed: broken)" in waited.stderr
    assert runs_by_name(bridge_env)["bad"]["state"] == "failed"
    # retry --run --failed sends its failed tasks again
    retried = ok("retry", "--run", "bad", "--failed", env=bridge_env)
    assert "1 failed task(s) available again" in retried
    wait_until(
        lambda: (
            sum(
                1
                for e in bridge_json("events", "bad/boom", env=bridge_env)
                if e["to"] == "failed" and e["from"] != "failed"
            )
            == 2
        ),
        timeout=60,
    )
    # wait ID... judges those tasks alone: n2/a is done though 'bad' failed
    assert bridge("wait", "n2/a", "--quiet", env=bridge_env).returncode == 0
    assert bridge("wait", "bad/boom", "--quiet", "--timeout", "30", env=bridge_env).returncode == 1
    # delete --run takes a finished run with its history, and nothing else
    assert "deleted run 'n1': 2 task(s)" in ok("delete", "--run", "n1", env=bridge_env)
    assert "n1" not in runs_by_name(bridge_env)
    assert query(db_url, "SELECT count(*) FROM task_events WHERE task_id LIKE ?", "n1/%") == [(0,)]
    assert len(bridge_json("list", env=bridge_env)) == 3
    # A running run is refused, then deleted with --force (cancelled first)
    slow = write(
        tmp_path, "slow.json", [{"id": "nap", "kind": "sleep", "payload": {"seconds": 600}}]
    )
    ok("submit", slow, "--run", "slow", env=bridge_env)
    wait_until(lambda: bridge_json("show", "slow/nap", env=bridge_env)["status"] == "working")
    refused = bridge("delete", "--run", "slow", env=bridge_env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: run 'slow' is running (1 working)")
    events = bridge_json("events", "slow/nap", env=bridge_env)
    forced = ok("delete", "--run", "slow", "--force", env=bridge_env)
    assert "deleted run 'slow': 1 task(s) (cancelled 1 first)" in forced, events
    assert "slow" not in runs_by_name(bridge_env)


def test_run_file_with_a_run_name_twice_resumes_that_run(tmp_path, bridge_env):
    graph = write(
        tmp_path, "g.json", [{"id": "x", "kind": "echo"}, {"id": "y", "dependencies": ["x"]}]
    )
    first = bridge("run", graph, "--run", "daily", "--workers", "1", env=bridge_env, timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "added 2 task(s), 0 already there (run 'daily')" in first.stdout
    again = bridge("run", graph, "--run", "daily", env=bridge_env, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "added 0 task(s), 2 already there (run 'daily')" in again.stdout
    assert [r["name"] for r in bridge_json("runs", env=bridge_env)] == ["daily"]


def test_delete_ids_is_all_or_nothing_and_says_why(db_path, bridge_env):
    assert bridge("add", "a", env=bridge_env).returncode == 0
    assert bridge("add", "b", "--after", "a", env=bridge_env).returncode == 0
    before = file_digest(db_path)
    refused = bridge("delete", "a", env=bridge_env)
    assert refused.returncode == 1
    assert refused.stderr == (
        "error: cannot delete task 'a': task 'b' depends on it and is available"
        " (delete or cancel it too)\n"
    )
    assert file_digest(db_path) == before
    assert bridge("delete", "--force", "a", env=bridge_env).returncode == 2
    assert ok("delete", "a", "b", env=bridge_env) == "deleted 2 task(s)\n"
    assert bridge_json("list", env=bridge_env) == []
    assert bridge_json("runs", env=bridge_env) == []


def test_fractional_timeout_is_kept_and_enforced(bridge_env, processes):
    added = bridge(
        "add",
        "nap",
        "--kind",
        "sleep",
        "--payload",
        '{"seconds": 20}',
        "--timeout",
        "0.5",
        env=bridge_env,
    )
    assert added.returncode == 0, added.stderr
    assert bridge_json("show", "nap", env=bridge_env)["timeout"] == 0.5
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    waited = bridge("wait", "nap", "--timeout", "15", "--quiet", env=bridge_env, timeout=30)
    assert waited.returncode == 1, waited.stderr + processes.logs()
    shown = bridge_json("show", "nap", env=bridge_env)
    assert shown["status"] == "failed"
    assert "timeout" in (shown["error"] or "").lower(), shown["error"]
