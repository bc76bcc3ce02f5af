"""Two databases on one Redis: attacks that fail today, kept as regression tests."""

import json
import time

from helpers import bridge, query, wait_until


def _add(env: dict, which: str, ids: list[str]) -> None:
    for task_id in ids:
        payload = json.dumps({"db": which})
        result = bridge("add", task_id, "--kind", "echo", "--payload", payload, env=env)
        assert result.returncode == 0, result.stderr


def test_a_second_databases_dispatcher_on_a_served_queue_is_refused_in_one_line(
    tmp_path, bridge_env, processes
):
    # Given a dispatcher serving the default queue for one database
    other = {**bridge_env, "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    _add(bridge_env, "first", ["a"])
    _add(other, "second", ["a"])
    processes.start("dispatch", env=bridge_env)
    time.sleep(1.5)
    # When another database's dispatcher starts on the same queue
    second = processes.start("dispatch", env=other)
    # Then it is refused, in one line, and leaves the first database's work alone
    assert second.wait(timeout=30) != 0
    log = processes.logs()
    assert "already served" in log and "Traceback" not in log, log


def test_two_databases_on_two_queues_keep_their_tasks_reports_and_outputs_apart(
    tmp_path, db_path, bridge_env, processes
):
    # Given two databases with tasks of the same ids, on two queues of one Redis
    other_path = tmp_path / "other.db"
    other = {
        **bridge_env,
        "BRIDGE_DATABASE_URL": f"sqlite:///{other_path}",
        "BRIDGE_QUEUE": "other",
    }
    ids = [f"x{n}" for n in range(5)]
    _add(bridge_env, "first", ids)
    _add(other, "second", ids)
    # When each is dispatched and worked on its own queue
    for env in (bridge_env, other):
        processes.start("dispatch", env=env)
        processes.start("worker", env=env)

    # Then each database gets its own tasks done, with its own outputs, and no report of the other
    def done(path) -> bool:
        return all(s == "done" for (s,) in query(path, "SELECT status FROM tasks"))

    wait_until(lambda: done(db_path) and done(other_path), timeout=60)
    for path, which in ((db_path, "first"), (other_path, "second")):
        outputs = [json.loads(v)["db"] for (v,) in query(path, "SELECT output FROM tasks")]
        assert set(outputs) == {which}
        # (a report of the other database's task of the same id would be a stale report)
        stale = query(path, "SELECT detail FROM task_events WHERE detail LIKE 'ignored: stale%'")
        assert stale == []
