"""End to end: what a user sees from the real ``bridge`` command (issue 7, section 4),
and that no password ever reaches the screen (section 1).

Every refusal is one ``error:`` line, a non-zero exit, and a database file left
byte for byte as it was (sha256 of the file and its WAL).
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import BRIDGE, bridge, file_digest, query, wait_until
from test_bad_input import assert_one_error_line

from bridge import graph, store

BRACKETS = "cannot open [/srv/data]"
ODD_ID = "x[/y]"
SECRET = "s3cr3t"


@pytest.fixture
def seeded(db_path: Path, db_url: str) -> str:
    """A database holding a task whose id, description and error are bracketed text,
    a failed task with a traceback in its failure event, and a plain one."""
    engine = store.open_engine(db_url)
    try:
        with store.writing(engine) as session:
            store.add_tasks(
                session=session,
                specs=[
                    graph.make_spec(task_id=ODD_ID, description=BRACKETS),
                    graph.make_spec(task_id="[bold]b[/bold]", dependencies=[ODD_ID]),
                    graph.make_spec(task_id="plain"),
                ],
            )
    finally:
        engine.dispose()
    detail = (
        f"failed: TaskFailed: {BRACKETS}\nTraceback (most recent call last):\n"
        + "".join(f'  File "/srv/[deep]/m{n}.py", line {n}, in f{n}\n    g()\n' for n in range(60))
        + f"TaskFailed: {BRACKETS}"
    )
    query(
        db_path,
        "UPDATE tasks SET status = 'failed', attempts = 1, error = ? WHERE id = ?",
        f"TaskFailed: {BRACKETS}",
        ODD_ID,
    )
    query(
        db_path,
        "INSERT INTO task_events (task_id, from_status, to_status, attempt, worker, at, detail)"
        " VALUES (?, 'working', 'failed', 1, 'w[1]', '2026-01-01 00:00:00.000000', ?)",
        ODD_ID,
        detail,
    )
    assert query(db_path, "PRAGMA wal_checkpoint(TRUNCATE)")[0][0] == 0
    return file_digest(db_path)


def failure_detail(db_path: Path) -> str:
    return query(
        db_path, "SELECT detail FROM task_events WHERE to_status = 'failed' ORDER BY id DESC"
    )[0][0]


def assert_clean_success(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "MarkupError" not in result.stderr + result.stdout


# ---------------------------------------------------------------------- user text is text


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--status", "failed"],
        ["show", ODD_ID],
        ["show", "[bold]b[/bold]"],
        ["events"],
        ["events", ODD_ID],
        ["slots"],
    ],
    ids=lambda a: "-".join(a),
)
def test_bracketed_user_text_prints_as_written(args, seeded, db_path, bridge_env, tmp_path):
    # Given tasks whose id, description and error hold square brackets
    # When a read command prints them on a terminal-less pipe
    result = bridge(*args, env={**bridge_env, "COLUMNS": "300"}, cwd=tmp_path)
    # Then it succeeds and shows the text, brackets and all
    assert_clean_success(result)
    if args[0] != "slots":
        assert ODD_ID in result.stdout or "[bold]b[/bold]" in result.stdout
    if args[:2] in (["show", ODD_ID], ["list"], ["events", ODD_ID]):
        assert BRACKETS in result.stdout
    assert file_digest(db_path) == seeded


def test_show_traceback_prints_the_latest_failure_in_full(seeded, db_path, bridge_env, tmp_path):
    # Given a failed task whose failure event holds a 60-frame traceback
    # When its traceback is asked for
    result = bridge("show", ODD_ID, "--traceback", env=bridge_env, cwd=tmp_path)
    # Then every line of it is printed, as written
    assert_clean_success(result)
    assert result.stdout.rstrip("\n") == failure_detail(db_path)
    assert file_digest(db_path) == seeded


def test_show_traceback_json_carries_it_and_a_task_without_failure_says_so(
    seeded, db_path, bridge_env, tmp_path
):
    data = json.loads(
        bridge("show", ODD_ID, "--traceback", "--json", env=bridge_env, cwd=tmp_path).stdout
    )
    assert data["traceback"] == failure_detail(db_path)
    result = bridge("show", "plain", "--traceback", env=bridge_env, cwd=tmp_path)
    assert_clean_success(result)
    assert "has no recorded failure" in result.stdout
    assert file_digest(db_path) == seeded


def test_run_with_bracketed_error_reports_it_and_shows_its_traceback(db_path, bridge_env, tmp_path):
    # Given a graph whose one task fails with a bracketed message
    (tmp_path / "g.json").write_text(
        json.dumps([{"id": ODD_ID, "kind": "fail", "payload": {"message": BRACKETS}}])
    )
    env = {**bridge_env, "TMPDIR": str(tmp_path), "COLUMNS": "300"}
    # When it is run to the end
    result = bridge("run", "g.json", "--workers", "1", env=env, cwd=tmp_path, timeout=120)
    # Then run ends "nothing more can run", naming the task and its error as written
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert BRACKETS in result.stdout + result.stderr
    # And show --traceback gives the handler's real traceback
    shown = bridge("show", ODD_ID, "--traceback", env=env, cwd=tmp_path)
    assert_clean_success(shown)
    assert "Traceback (most recent call last)" in shown.stdout
    assert f"TaskFailed: {BRACKETS}" in shown.stdout


# ---------------------------------------------------------------------- events --follow


def test_events_follow_prints_new_events_until_ctrl_c(seeded, db_path, bridge_env, tmp_path):
    # Given ``events --follow`` running
    follower = subprocess.Popen(
        [*BRIDGE, "events", "--follow", "--json"],
        env=bridge_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict] = []
    try:
        assert follower.stdout is not None
        # Then it first prints the history, one JSON object a line
        while len(lines) < 4:
            lines.append(json.loads(follower.stdout.readline()))
        assert lines[-1]["to"] == "failed"
        # When a task is added meanwhile
        assert bridge("add", "late", env=bridge_env, cwd=tmp_path).returncode == 0
        # Then its event follows
        late = json.loads(follower.stdout.readline())
        assert late["task_id"] == "late" and late["to"] == "available"
        assert late["id"] > lines[-1]["id"]
    finally:
        # When Ctrl-C is pressed
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    # Then it exits 0 without a traceback
    assert follower.returncode == 0, err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- bare bridge


def test_bridge_alone_prints_the_help(tmp_path):
    result = subprocess.run(BRIDGE, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: bridge")
    assert "Commands:" in result.stdout and "status" in result.stdout
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- no database


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["wait", "--timeout", "1"],
        ["show", "a"],
        ["show", "a", "--traceback"],
        ["events"],
        ["events", "--follow"],
        ["slots"],
        ["status"],
        ["retry", "a"],
        ["cancel", "a"],
        ["clean", "--yes"],
    ],
    ids=lambda a: "-".join(a),
)
def test_commands_that_only_read_say_there_is_no_database_and_create_none(
    args, redis_server, tmp_path
):
    # Given a folder without a database and no BRIDGE_DATABASE_URL
    env = {**os.environ, "BRIDGE_REDIS_URL": redis_server.url}
    # When a command other than add/run/dispatch runs there
    result = bridge(*args, env=env, cwd=tmp_path)
    # Then it says so in one line, and creates nothing
    line = assert_one_error_line(result)
    assert line == (
        "error: no database at ./task-coordinator.db (bridge add or bridge run creates it)"
    )
    assert list(tmp_path.iterdir()) == []


def test_add_creates_the_database_the_others_then_find(redis_server, tmp_path):
    env = {**os.environ, "BRIDGE_REDIS_URL": redis_server.url}
    assert bridge("add", "a", env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "task-coordinator.db").is_file()
    listed = bridge("list", "--json", env=env, cwd=tmp_path)
    assert [t["id"] for t in json.loads(listed.stdout)] == ["a"]


# ---------------------------------------------------------------------- read-only database


def _can_mount_read_only() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind / /mnt 2>/dev/null || mount -t tmpfs t /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def run_read_only(target: Path, args: list[str], env: dict[str, str], cwd: Path):
    """Run ``bridge ARGS`` with ``target`` (a file or folder) unwritable for real: a
    read-only bind mount when we are root (root ignores file modes), else chmod."""
    if os.geteuid() == 0:
        script = (
            f'mount --bind "{target}" "{target}" && mount -o remount,ro,bind "{target}"'
            ' && exec "$@"'
        )
        argv = ["unshare", "-m", "sh", "-c", script, "sh", *BRIDGE, *args]
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    mode = target.stat().st_mode
    target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        return bridge(*args, env=env, cwd=cwd)
    finally:
        target.chmod(mode)


@pytest.mark.skipif(
    os.geteuid() == 0 and not _can_mount_read_only(),
    reason="root without mount rights cannot make a file unwritable",
)
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_database_can_still_be_read(what, redis_server):
    # Given a database file that cannot be written (the file, or its whole folder)
    folder = Path(tempfile.mkdtemp())
    try:
        db = folder / "bridge.db"
        engine = store.open_engine(f"sqlite:///{db}")
        with store.writing(engine) as session:
            store.add_tasks(session=session, specs=[graph.make_spec(task_id=ODD_ID)])
        engine.dispose()
        assert not Path(f"{db}-wal").exists()  # closed cleanly: all in the main file
        before = file_digest(db)
        env = {
            **os.environ,
            "BRIDGE_DATABASE_URL": f"sqlite:///{db}",
            "BRIDGE_REDIS_URL": redis_server.url,
        }
        target = db if what == "file" else folder
        # When it is listed, shown and counted
        listed = run_read_only(target, ["list", "--json"], env, folder)
        shown = run_read_only(target, ["show", ODD_ID], env, folder)
        status = run_read_only(target, ["status", "--json"], env, folder)
        # Then each works
        assert listed.returncode == 0, listed.stderr
        assert [t["id"] for t in json.loads(listed.stdout)] == [ODD_ID]
        assert shown.returncode == 0 and ODD_ID in shown.stdout, shown.stderr
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["counts"] == {"available": 1}
        # And a write is refused in one line
        refused = run_read_only(target, ["cancel", ODD_ID], env, folder)
        assert_one_error_line(refused, "readonly")
        assert file_digest(db) == before
    finally:
        shutil.rmtree(folder)


# ---------------------------------------------------------------------- refused options


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--description", "d"], "--description"),
        (["--kind", "echo"], "--kind"),
        (["--payload", "{}"], "--payload"),
        (["--after", "plain"], "--after"),
        (["--priority", "0"], "--priority"),
        (["--max-attempts", "3"], "--max-attempts"),
        (["--timeout", "9"], "--timeout"),
        (["--kind", "echo", "--priority", "2"], "--kind, --priority"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_add_file_refuses_options_it_would_ignore(
    extra, named, seeded, db_path, bridge_env, tmp_path
):
    (tmp_path / "g.json").write_text(json.dumps([{"id": "new"}]))
    result = bridge("add", "--file", "g.json", *extra, env=bridge_env, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_error_line(result, named, "--file")
    assert file_digest(db_path) == seeded


@pytest.mark.parametrize("value", ["-5", "-0.1", "nan", "soon"])
def test_wait_refuses_a_negative_or_non_number_timeout(
    value, seeded, db_path, bridge_env, tmp_path
):
    result = bridge("wait", "--timeout", value, env=bridge_env, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_error_line(result, "--timeout")
    assert file_digest(db_path) == seeded


# ---------------------------------------------------------------------- no password shown


@pytest.mark.parametrize(
    ("url", "command"),
    [
        ("postgresql://u:s3cr3t/x@nohost:1/db", ["list"]),
        ("postgresql://u:s3cr3t/x@nohost:1/db", ["add", "x"]),
        ("postgresql+psycopg://u:s3cr3t@nohost:1/db?sslpassword=s3cr3t", ["add", "x"]),
        ("u:s3cr3t@nohost/db", ["list"]),
        ("postgresql:/u:s3cr3t@nohost/db", ["add", "x"]),
        ("postgresql://u:s3cr3t@nohost:notaport/db", ["add", "x"]),
    ],
)
def test_a_bad_database_url_never_shows_its_password(url, command, seeded, db_path, tmp_path):
    env = {**os.environ, "BRIDGE_DATABASE_URL": url}
    result = bridge(*command, env=env, cwd=tmp_path)
    assert_one_error_line(result, "database")
    assert SECRET not in result.stdout + result.stderr
    assert file_digest(db_path) == seeded


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr3t@127.0.0.1:1/0",
        "redis://user:s3cr3t/x@127.0.0.1:1/0",
        "redis://user:s3c#r3t@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=s3cr3t",
        "unix:///nope.sock?password=s3cr3t",
        "unix://user:s3cr3t@/nope.sock",
    ],
)
@pytest.mark.parametrize(
    "command",
    [["dispatch", "--once"], ["worker", "--burst"], ["status"], ["cancel", "q"]],
    ids=["dispatch", "worker", "status", "cancel"],
)
def test_an_unreachable_redis_never_shows_its_password(
    url, command, db_path, db_url, bridge_env, tmp_path
):
    # Given a task in flight (so cancel has a job to withdraw) and a Redis that is not there
    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=[graph.make_spec(task_id=command[-1])])
    engine.dispose()
    query(db_path, "UPDATE tasks SET status = 'queued', attempts = 1, job_id = 'j-1'")
    env = {**bridge_env, "BRIDGE_REDIS_URL": url}
    # When a command talks to it
    result = bridge(*command, env=env, cwd=tmp_path, timeout=60)
    # Then whatever it prints (error, warning, log) holds no piece of the password
    assert "Traceback" not in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "s3c" not in result.stdout + result.stderr
    if command[0] in ("dispatch", "worker"):
        assert_one_error_line(result, "Redis")
    else:
        assert result.returncode == 0, result.stderr
        assert "warning:" in result.stderr


def test_the_dispatcher_start_up_line_hides_every_password(
    redis_server, db_path, db_url, bridge_env, tmp_path
):
    # Given a Redis that wants a password with URL characters in it, given percent-encoded
    import redis

    password = "s3cr3t/#@?:x"
    redis.Redis.from_url(redis_server.url).config_set("requirepass", password)
    encoded = "s3cr3t%2F%23%40%3F%3Ax"
    for url in (
        f"redis://:{encoded}@127.0.0.1:{redis_server.port}/0",
        f"redis://127.0.0.1:{redis_server.port}/0?password={encoded}",
    ):
        env = {**bridge_env, "BRIDGE_REDIS_URL": url}
        # When the dispatcher runs a pass, and a worker a burst
        dispatched = bridge("-v", "dispatch", "--once", env=env, cwd=tmp_path)
        worked = bridge("worker", "--burst", env=env, cwd=tmp_path)
        # Then both work and neither logs the password
        assert dispatched.returncode == 0, dispatched.stderr
        assert worked.returncode == 0, worked.stderr
        assert f"127.0.0.1:{redis_server.port}" in dispatched.stderr
        for output in (dispatched.stdout + dispatched.stderr, worked.stdout + worked.stderr):
            assert SECRET not in output and encoded not in output


# ---------------------------------------------------------------------- status


def test_status_shows_the_dispatcher_the_workers_the_queue_and_the_counts(
    processes, db_path, db_url, bridge_env, tmp_path
):
    # Given three tasks, one taking long enough to be seen running
    for args in (["add", "a"], ["add", "b"]):
        assert bridge(*args, env=bridge_env, cwd=tmp_path).returncode == 0
    slow = ["add", "slow", "--kind", "sleep", "--payload", '{"seconds": 30}']
    assert bridge(*slow, env=bridge_env, cwd=tmp_path).returncode == 0
    # And no dispatcher yet
    before = json.loads(bridge("status", "--json", env=bridge_env, cwd=tmp_path).stdout)
    assert before["dispatching"] is False and before["dispatchers"] == []
    assert before["workers"] == [] and before["queue_depth"] == 0
    assert before["counts"] == {"available": 3}
    # When a dispatcher and a named worker run
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--name", "status-w1", env=bridge_env)

    def seen() -> dict:
        return json.loads(bridge("status", "--json", env=bridge_env, cwd=tmp_path).stdout)

    wait_until(lambda: seen()["counts"].get("working") == 1 and seen()["counts"].get("done") == 2)
    now = seen()
    # Then status names the lease holder and since when
    assert now["dispatching"] is True
    (lease,) = now["dispatchers"]
    assert lease["name"].startswith("dispatcher") and lease["live"] is True
    assert lease["holder"] and lease["since"] and lease["expires_in"] > 0
    # And the worker, busy with the slow task's job
    (worker,) = now["workers"]
    assert worker["name"] == "status-w1"
    assert worker["state"] == "busy"
    job_id = query(db_path, "SELECT job_id FROM tasks WHERE id = 'slow'")[0][0]
    assert worker["current_job"] == job_id
    # And in flight against slots, queue depth and counts
    assert now["in_flight"] == 1 and now["slots_busy"] == 1 and now["slots"] == 5
    assert now["queue_depth"] == 0
    assert now["counts"] == {"done": 2, "working": 1} and now["total"] == 3
    # And the screen version says the same in words
    screen = bridge("status", env={**bridge_env, "COLUMNS": "200"}, cwd=tmp_path)
    assert screen.returncode == 0, screen.stderr
    assert lease["holder"] in screen.stdout and "since" in screen.stdout
    assert "status-w1" in screen.stdout and "busy" in screen.stdout
    assert "1/5 slot(s) busy" in screen.stdout
