"""End to end: ``bridge schedule`` through the real CLI, and real dispatchers creating
each due time's run exactly once while they are killed, restarted and fail over."""

import json
import os
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import bridge, bridge_json, file_digest, query, wait_until
from test_bad_input import assert_one_error_line

GRAPH = [
    {"id": "fetch", "kind": "noop"},
    {"id": "parse", "kind": "noop", "dependencies": ["fetch"]},
]


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps(GRAPH))
    return path


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.both_backends
def test_schedule_add_list_and_remove_through_the_cli(bridge_env, graph_file):
    # Given a nightly schedule in Berlin time
    added = bridge(
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--file",
        str(graph_file),
        "--timezone",
        "Europe/Berlin",
        env=bridge_env,
    )
    assert added.returncode == 0, added.stderr
    assert "schedule 'nightly' added" in added.stdout
    # When it is listed as JSON
    [listed] = bridge_json("schedule", "list", env=bridge_env)
    # Then its next due time is the next 02:00 in Berlin, in UTC and local time
    local = datetime.fromisoformat(listed["next_due_local"])
    assert (local.hour, local.minute) == (2, 0)
    assert local.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert utc(listed["next_due"]) == local
    assert utc(listed["next_due"]) - datetime.now(timezone.utc) <= timedelta(days=1)
    assert listed["last_due"] is None
    assert (listed["name"], listed["cron"], listed["catch_up"]) == ("nightly", "0 2 * * *", False)
    assert (listed["timezone"], listed["tasks"]) == ("Europe/Berlin", 2)
    table = bridge("schedule", "list", env=bridge_env)
    assert table.returncode == 0 and "nightly" in table.stdout
    # And once removed it is gone
    removed = bridge("schedule", "remove", "nightly", env=bridge_env)
    assert removed.returncode == 0, removed.stderr
    assert bridge_json("schedule", "list", env=bridge_env) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--cron", "0 25 * * *"], ["bad cron expression", "0 25 * * *"]),
        (["--cron", "0 2 * *"], ["bad cron expression", "five fields"]),
        (["--cron", "@daily", "--timezone", "Mars/Olympus"], ["unknown time zone", "Mars/Olympus"]),
    ],
)
def test_bad_schedules_are_one_error_line_and_change_nothing(
    bridge_env, db_path, graph_file, args, words
):
    # Given a database holding one schedule
    ok = bridge(
        "schedule", "add", "s", "--cron", "@daily", "--file", str(graph_file), env=bridge_env
    )
    assert ok.returncode == 0, ok.stderr
    before = file_digest(db_path)
    # When a bad one is added, then one error line, and the database is as it was
    result = bridge("schedule", "add", "t", *args, "--file", str(graph_file), env=bridge_env)
    assert_one_error_line(result, *words)
    assert file_digest(db_path) == before


def test_duplicate_missing_and_unreadable_schedules_are_one_error_line(
    bridge_env, db_path, graph_file, tmp_path
):
    add = ["schedule", "add", "s", "--cron", "@daily", "--file"]
    assert bridge(*add, str(graph_file), env=bridge_env).returncode == 0
    before = file_digest(db_path)
    assert_one_error_line(bridge(*add, str(graph_file), env=bridge_env), "'s' already exists")
    assert_one_error_line(bridge("schedule", "remove", "nope", env=bridge_env), "no schedule")
    cyclic = tmp_path / "cyclic.json"
    cyclic.write_text('[{"id": "a", "dependencies": ["b"]}, {"id": "b", "dependencies": ["a"]}]')
    assert_one_error_line(
        bridge("schedule", "add", "c", "--cron", "@daily", "--file", str(cyclic), env=bridge_env),
        "cycle",
    )
    assert file_digest(db_path) == before


# ------------------------------------------------------------------ real dispatchers


def lease_holder_pid(db_url: str) -> int | None:
    """The pid of the dispatcher holding the lease (its name is ``host:pid:hex``)."""
    try:
        rows = query(db_url, "SELECT holder FROM leases WHERE name = 'dispatcher'")
    except sqlite3.OperationalError:  # the first dispatcher has not made the schema yet
        return None
    return int(rows[0][0].split(":")[1]) if rows and rows[0][0] else None


def scheduled_runs(db_url: str) -> list[tuple[str, str]]:
    return [
        (name, due)
        for name, due in query(
            db_url, "SELECT name, due_at FROM runs WHERE schedule = 'every' ORDER BY name"
        )
    ]


def sleep_until(moment: datetime) -> None:
    wait = (moment - datetime.now(timezone.utc)).total_seconds()
    if wait > 0:
        time.sleep(wait)


@pytest.mark.xdist_group("schedule")
def test_a_schedule_every_minute_makes_exactly_one_run_per_due_time_through_kills_and_failover(
    tmp_path, bridge_env, db_url, graph_file, processes
):
    # Given a dispatcher holding the lease, a second one standing by, and a worker
    first = processes.start("dispatch", env=bridge_env)
    wait_until(lambda: lease_holder_pid(db_url) == first.pid, timeout=60)
    dispatchers = {first.pid: first}
    second = processes.start("dispatch", env=bridge_env)
    dispatchers[second.pid] = second
    processes.start("worker", "--quiet", env=bridge_env)
    # And a schedule due every minute
    added = bridge(
        "schedule", "add", "every", "--cron", "* * * * *", "--file", str(graph_file), env=bridge_env
    )
    assert added.returncode == 0, added.stderr
    [listed] = bridge_json("schedule", "list", env=bridge_env)
    due = [utc(listed["next_due"]) + timedelta(minutes=n) for n in range(3)]

    def killed_and_replaced() -> None:
        """SIGKILL the lease holder; start a new dispatcher so two are always there."""
        pid = lease_holder_pid(db_url)
        assert pid in dispatchers, (pid, processes.logs())
        os.killpg(pid, signal.SIGKILL)
        dispatchers.pop(pid).wait(timeout=30)
        replacement = processes.start("dispatch", env=bridge_env)
        dispatchers[replacement.pid] = replacement

    def run_made(n: int) -> bool:
        return len(scheduled_runs(db_url)) >= n

    # When the first due time passes, its run is created
    wait_until(lambda: run_made(1), timeout=90)
    # And the lease holder is killed a moment before the second due time (the standby
    # takes over after the lease expires: the second due time is missed, then made)
    sleep_until(due[1] - timedelta(seconds=1))
    killed_and_replaced()
    wait_until(lambda: run_made(2), timeout=75)
    # And the holder is killed again right after it made that run (its successor must
    # not make it again)
    killed_and_replaced()
    wait_until(lambda: run_made(3), timeout=90)
    removed = bridge("schedule", "remove", "every", env=bridge_env)
    assert removed.returncode == 0, removed.stderr
    # Then exactly three runs exist, one per due time, named after it
    runs = scheduled_runs(db_url)
    assert [name for name, _ in runs] == [f"every-{d:%Y%m%dT%H%M}Z" for d in due], runs
    assert [utc(d.replace(" ", "T") + "Z") for _, d in runs] == due
    # And the second was made late, by the successor that took the lease over
    [(made,)] = query(db_url, "SELECT created_at FROM runs WHERE name = ?", runs[1][0])
    assert utc(made.replace(" ", "T") + "Z") > due[1] + timedelta(seconds=5)
    # And no dispatcher tried to make a run that was already there (a killed holder may
    # die between its commit and its log line, so its own "created run" line can be lost)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("proc-*-dispatch.log"))
    assert "not created" not in logs and "Traceback" not in logs, logs[-6000:]
    # And every task of the three runs ran to done
    wait_until(
        lambda: query(db_url, "SELECT count(*) FROM tasks WHERE status = 'done'")[0][0] == 6,
        timeout=60,
    )
    assert query(db_url, "SELECT count(*) FROM tasks")[0][0] == 6
