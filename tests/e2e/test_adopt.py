"""``bridge db adopt``: a Task Coordinator database made a bridge one, through the real
CLI on real files, then run by a real dispatcher and worker."""

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import BRIDGE, bridge, file_digest, query, wait_until
from test_bad_input import assert_one_error_line
from test_cli_ux import _can_mount_read_only, run_read_only

TC_DDL = """
CREATE TABLE tasks (
  id TEXT PRIMARY KEY,
  description TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ({statuses})),
  worker TEXT,
  dependencies TEXT,  -- JSON array of task IDs
  output TEXT,
  error TEXT,
  started_at TEXT,
  completed_at TEXT,
  created_at TEXT DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE worker_slots (
  slot INTEGER PRIMARY KEY,
  worker_id TEXT,
  active INTEGER NOT NULL DEFAULT 0,
  task_id TEXT,
  updated_at TEXT DEFAULT CURRENT_TIMESTAMP
);
"""
"""The Task Coordinator's schema, exactly as the issue gives it."""

ORIGINAL = "'available', 'working', 'done', 'failed'"
LATER = "'available', 'working', 'claimed', 'done', 'failed'"

SEED = (
    "id",
    "description",
    "status",
    "worker",
    "dependencies",
    "output",
    "error",
    "started_at",
    "completed_at",
    "created_at",
)

QUOTED = 'it\'s "quoted"'
UNICODE = "ünï-çødé ✓ 任务"
NEWLINE = "two\nlines"


def make_tc(path: Path, rows: list[dict], statuses: str = LATER, slots: int = 2) -> None:
    """A Task Coordinator file: its DDL, the rows as given (missing columns NULL, or the
    default for ``created_at`` when the key is absent), and busy slot rows."""
    with sqlite3.connect(path) as conn:
        conn.executescript(TC_DDL.format(statuses=statuses))
        for row in rows:
            columns = list(row)
            marks = ", ".join("?" * len(columns))
            conn.execute(
                f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({marks})",
                [row[c] for c in columns],
            )
        conn.executemany(
            "INSERT INTO worker_slots (slot, worker_id, active, task_id) VALUES (?, ?, 1, ?)",
            [(n, f"tc-worker-{n}", rows[0]["id"]) for n in range(1, slots + 1)],
        )
    conn.close()


def seed_values(path: Path) -> dict[str, tuple]:
    """Every seed column's value and storage type, per task id."""
    columns = ", ".join(f"{c}, typeof({c})" for c in SEED)
    return {row[0]: row for row in query(path, f"SELECT {columns} FROM tasks")}


def dump(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        text = "\n".join(conn.iterdump())
    conn.close()
    return text


def adopt(env: dict, *args: str):
    return bridge("db", "adopt", *args, env=env)


def env_for(db: Path, bridge_env: dict) -> dict:
    return {**bridge_env, "BRIDGE_DATABASE_URL": f"sqlite:///{db}"}


def every_status_rows(statuses: str) -> list[dict]:
    rows = [
        {
            "id": "done-1",
            "description": "first",
            "status": "done",
            "worker": "w1",
            "dependencies": "[]",
            "output": '{"n": 1}',
            "started_at": "2024-03-01 10:00:00",
            "completed_at": "2024-03-01 10:00:05",
            "created_at": "2024-03-01 09:59:00",
        },
        {
            "id": QUOTED,
            "description": "say \"hi\"\nand 'bye'",
            "status": "done",
            "dependencies": json.dumps(["done-1"]),
            "output": "plain text, not JSON",
            "created_at": "2024-03-01 09:59:01",
        },
        {
            "id": UNICODE,
            "description": UNICODE,
            "status": "working",
            "worker": "w2 ✓",
            "dependencies": json.dumps(["done-1", QUOTED]),
            "started_at": "2024-03-01 10:01:00",
            "created_at": "2024-03-01 09:59:02",
        },
        {
            "id": NEWLINE,
            "description": "",
            "status": "available",
            "dependencies": json.dumps([UNICODE, "done-1", UNICODE]),
            "created_at": "2024-03-01T09:59:03Z",
        },
        {
            "id": "failed-1",
            "description": "broke",
            "status": "failed",
            "worker": "w1",
            "error": "Traceback...\nValueError: boom",
            "started_at": "2024-03-01 10:02:00",
            "completed_at": "2024-03-01 10:02:01",
            "created_at": None,
        },
        {"id": "plain", "description": "no deps, default created_at", "status": "available"},
    ]
    if "claimed" in statuses:
        rows.append(
            {
                "id": "claimed-1",
                "description": "held",
                "status": "claimed",
                "worker": "w3",
                "dependencies": None,
                "created_at": "2024-03-01 09:59:04",
            }
        )
    return rows


# ------------------------------------------------------------------------------ adoption


@pytest.mark.parametrize("statuses", [ORIGINAL, LATER], ids=["original", "with-claimed"])
def test_adopt_keeps_every_value_and_maps_the_states(tmp_path, bridge_env, statuses):
    # Given a Task Coordinator file with tasks in every status, odd ids and timestamps
    db = tmp_path / "task-coordinator.db"
    rows = every_status_rows(statuses)
    make_tc(db, rows, statuses)
    before, dumped = seed_values(db), dump(db)
    env = env_for(db, bridge_env)
    # When it is adopted
    result = adopt(env, "--kind", "payload_log", "--yes")
    # Then it says what it did
    assert result.returncode == 0, result.stderr
    reopened = {"working", "claimed"} & {r["status"] for r in rows}
    assert f"adopted {len(rows)} task(s) as kind 'payload_log'" in result.stdout
    assert f"re-opened {len(reopened)} task(s)" in result.stdout
    assert "blocked" not in result.stdout
    # And every seed value is kept as stored (type too); only working/claimed change status
    after = seed_values(db)
    assert after.keys() == before.keys()
    for task_id, old in before.items():
        new = after[task_id]
        expected = list(old)
        if old[4] in ("working", "claimed"):
            expected[4] = "available"
        assert list(new) == expected, task_id
    # And bridge reads them: kind set, dependencies as declared, a payload the handler can use
    listed = {t["id"]: t for t in json.loads(bridge("list", "--json", env=env).stdout)}
    assert {t["kind"] for t in listed.values()} == {"payload_log"}
    assert listed[NEWLINE]["dependencies"] == [UNICODE, "done-1", UNICODE]
    assert listed[QUOTED]["payload"] == {"id": QUOTED, "description": "say \"hi\"\nand 'bye'"}
    assert listed[QUOTED]["output"] == "plain text, not JSON"
    # And in the Task Coordinator's order (created_at, then insertion)
    # And the dependencies are edges (duplicates once)
    edges = set(query(db, "SELECT task_id, depends_on FROM task_edges"))
    assert edges == {
        (QUOTED, "done-1"),
        (UNICODE, "done-1"),
        (UNICODE, QUOTED),
        (NEWLINE, UNICODE),
        (NEWLINE, "done-1"),
    }
    # And the re-opened tasks say which worker held them
    for row in rows:
        if row["status"] in reopened:
            (event,) = query(
                db,
                "SELECT from_status, to_status, worker, detail FROM task_events"
                " WHERE task_id = ? AND from_status = ?",
                row["id"],
                row["status"],
            )
            assert event[:3] == (row["status"], "available", row["worker"])
            assert row["worker"] in event[3] and "runs again" in event[3]
    # And readiness is right: the unicode task waits on nothing unfinished, the newline one on it
    pending = dict(query(db, "SELECT id, pending_deps FROM tasks"))
    assert pending[UNICODE] == 0 and pending[NEWLINE] == 1 and pending["plain"] == 0
    # And the status check is gone, the slots are free
    (sql,) = query(db, "SELECT sql FROM sqlite_master WHERE name = 'tasks'")[0]
    assert "CHECK" not in sql
    assert query(db, "SELECT slot, worker_id, active, task_id FROM worker_slots") == [
        (1, None, 0, None),
        (2, None, 0, None),
    ]
    # And the copy beside it holds the file as it was
    (copy,) = [p for p in tmp_path.iterdir() if ".before-bridge-" in p.name]
    assert copy.name.startswith("task-coordinator.db.before-bridge-")
    assert copy.name.endswith("Z") and len(copy.name.split("-")[-1]) == len("20261127T215500Z")
    assert dump(copy) == dumped
    # And a second adoption refuses, leaving it as it is
    digest = file_digest(db)
    again = adopt(env, "--kind", "payload_log", "--yes")
    assert_one_error_line(again, "already a bridge database")
    assert file_digest(db) == digest
    assert len([p for p in tmp_path.iterdir() if ".before-bridge-" in p.name]) == 1


def test_seq_follows_the_task_coordinators_order(tmp_path, bridge_env):
    # Given tasks inserted out of created_at order, with equal and missing created_at
    db = tmp_path / "tc.db"
    make_tc(
        db,
        [
            {"id": "c", "description": "", "status": "available", "created_at": "2024-01-03"},
            {"id": "a", "description": "", "status": "available", "created_at": "2024-01-01"},
            {"id": "b2", "description": "", "status": "available", "created_at": "2024-01-02"},
            {"id": "b1", "description": "", "status": "available", "created_at": "2024-01-02"},
            {"id": "z", "description": "", "status": "available", "created_at": None},
        ],
    )
    env = env_for(db, bridge_env)
    assert adopt(env, "--kind", "noop", "--yes").returncode == 0
    # Then bridge lists (and dispatches) them oldest first, ties in insertion order
    listed = json.loads(bridge("list", "--json", env=env).stdout)
    assert [t["id"] for t in listed] == ["z", "a", "b2", "b1", "c"]


def irregular_rows() -> list[dict]:
    return [
        {"id": "base", "description": "", "status": "done", "output": "1"},
        {"id": "ok", "description": "", "status": "available", "dependencies": '["base"]'},
        {
            "id": "was-working",
            "description": "",
            "status": "working",
            "worker": "old-7",
            "dependencies": '["base"]',
        },
        {"id": "was-claimed", "description": "", "status": "claimed", "worker": "old-8"},
        {
            "id": "unknown",
            "description": "",
            "status": "available",
            "dependencies": '["base", "ghost"]',
        },
        {"id": "cyc-a", "description": "", "status": "available", "dependencies": '["cyc-b"]'},
        {
            "id": "cyc-b",
            "description": "",
            "status": "working",
            "worker": "old-9",
            "dependencies": '["cyc-a"]',
        },
        {"id": "self", "description": "", "status": "available", "dependencies": '["self"]'},
        {"id": "bad-json", "description": "", "status": "available", "dependencies": "[base"},
        {"id": "not-list", "description": "", "status": "available", "dependencies": '{"base": 1}'},
        {"id": "not-str", "description": "", "status": "available", "dependencies": "[1]"},
        {
            "id": "after-blocked",
            "description": "",
            "status": "available",
            "dependencies": '["unknown"]',
        },
        {"id": "done-odd", "description": "", "status": "done", "dependencies": '["ghost"]'},
    ]


BLOCKED = {
    "unknown": "unknown task(s) 'ghost'",
    "cyc-a": "cycle",
    "cyc-b": "cycle",
    "self": "cycle",
    "bad-json": "not valid JSON",
    "not-list": "not a JSON list",
    "not-str": "not a JSON list",
}


def test_adopted_tasks_run_and_the_irregular_ones_stay_blocked(tmp_path, bridge_env, processes):
    # Given a Task Coordinator file with data bridge itself would refuse
    db = tmp_path / "task-coordinator.db"
    make_tc(db, irregular_rows())
    before = seed_values(db)
    env = env_for(db, bridge_env)
    env["BRIDGE_TEST_PAYLOAD_LOG"] = str(tmp_path / "payloads.log")
    # When it is adopted
    result = adopt(env, "--kind", "payload_log", "--yes")
    # Then nothing is dropped, and the summary lists each blocked task with its reason
    assert result.returncode == 0, result.stderr
    assert seed_values(db).keys() == before.keys()
    assert f"blocked {len(BLOCKED)} task(s)" in result.stdout
    lines = result.stdout.splitlines()
    for task_id, reason in BLOCKED.items():
        assert any(line.startswith(f"  {task_id} (") and reason in line for line in lines), task_id
    assert "1 done task(s) declare such dependencies" in result.stdout
    # When a real dispatcher and worker run the database
    processes.start("dispatch", env=env)
    processes.start("worker", "--quiet", env=env)
    runnable = {"ok", "was-working", "was-claimed"}

    def finished() -> bool:
        states = dict(query(db, "SELECT id, status FROM tasks"))
        return all(states[t] == "done" for t in runnable)

    wait_until(finished, timeout=60)
    # Then the runnable tasks ran once each, given their id and description
    ran = [json.loads(line) for line in (tmp_path / "payloads.log").read_text().splitlines()]
    assert sorted(p["id"] for p in ran) == sorted(runnable), processes.logs()
    # And the blocked ones (and the one waiting on a blocked one) never ran
    states = dict(query(db, "SELECT id, status FROM tasks"))
    for task_id in [*BLOCKED, "after-blocked"]:
        assert states[task_id] == "available", task_id
    # And bridge show says why
    for task_id, reason in BLOCKED.items():
        shown = bridge("show", task_id, "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        why = json.loads(shown.stdout)["why"]
        assert why.startswith("blocked since adoption from the Task Coordinator") and reason in why
    text = bridge("show", "bad-json", env=env)
    assert text.returncode == 0 and "not valid JSON" in text.stdout.replace("\n", " ")
    waiting = json.loads(bridge("show", "after-blocked", "--json", env=env).stdout)["why"]
    assert waiting.startswith("waiting for 1 dependency")
    # And the malformed dependencies text is shown as stored
    listed = {t["id"]: t for t in json.loads(bridge("list", "--json", env=env).stdout)}
    assert listed["bad-json"]["dependencies"] == "[base"
    assert bridge("list", env=env).returncode == 0


# ------------------------------------------------------------------------------ confirmation


def test_adopt_needs_a_kind_and_a_confirmation(tmp_path, bridge_env):
    db = tmp_path / "task-coordinator.db"
    make_tc(db, every_status_rows(LATER))
    env = env_for(db, bridge_env)
    digest = file_digest(db)
    # Without --kind: a usage error
    assert_one_error_line(adopt(env, "--yes"), "--kind")
    # Without --yes and no terminal: refused in one line
    assert_one_error_line(adopt(env, "--kind", "noop"), "--yes")
    assert file_digest(db) == digest
    assert [p.name for p in tmp_path.iterdir()] == ["task-coordinator.db"]


# ------------------------------------------------------------------------------ bad input


def _tc_bytes(tmp_path: Path) -> bytes:
    source = tmp_path / "source.db"
    make_tc(
        source, [{"id": f"t{n}", "description": "x" * 500, "status": "done"} for n in range(40)]
    )
    data = source.read_bytes()
    source.unlink()
    return data


def _make_bad(kind: str, db: Path, bridge_env: dict) -> None:
    if kind == "text":
        db.write_text("id,description\n1,not a database\n")
    elif kind == "empty":
        db.write_bytes(b"")
    elif kind == "corrupt":
        data = bytearray(_tc_bytes(db.parent))
        data[4096:8192] = b"\xa5" * 4096  # page 2: garbage
        db.write_bytes(bytes(data))
    elif kind == "truncated":
        db.write_bytes(_tc_bytes(db.parent)[: 4096 * 3 + 17])
    elif kind == "unrelated":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT, done INTEGER)")
            conn.execute("CREATE TABLE worker_slots (slot INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO tasks (title, done) VALUES ('milk', 0)")
        conn.close()
    elif kind == "bridge":
        assert bridge("add", "a", env=env_for(db, bridge_env)).returncode == 0
    elif kind == "empty-sqlite":
        sqlite3.connect(db).close()
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA user_version = 1")
        conn.close()


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("text", ["not a SQLite database"]),
        ("empty", ["the file is empty"]),
        ("empty-sqlite", ["no tables"]),
        ("corrupt", ["corrupt"]),
        ("truncated", ["cannot adopt"]),
        ("unrelated", ["not a Task Coordinator database"]),
        ("bridge", ["already a bridge database"]),
        ("missing", ["no such file"]),
    ],
)
def test_bad_input_is_refused_and_left_unchanged(tmp_path, bridge_env, kind, words):
    # Given a file that is not a Task Coordinator database (or no file at all)
    db = tmp_path / "task-coordinator.db"
    _make_bad(kind, db, bridge_env)
    names = sorted(p.name for p in tmp_path.iterdir())
    digest = file_digest(db) if db.exists() else None
    # When it is adopted
    result = adopt(env_for(db, bridge_env), "--kind", "noop", "--yes")
    # Then one error line, the file byte for byte as it was, and no copy left behind
    assert_one_error_line(result, "cannot adopt", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert (file_digest(db) if db.exists() else None) == digest


def test_not_a_sqlite_url_is_refused(bridge_env):
    env = {**bridge_env, "BRIDGE_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x"}
    assert_one_error_line(adopt(env, "--kind", "noop", "--yes"), "SQLite file")


@pytest.mark.skipif(
    os.geteuid() == 0 and not _can_mount_read_only(),
    reason="root without mount rights cannot make a file unwritable",
)
@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_file_or_folder_is_refused_and_left_unchanged(tmp_path, bridge_env, what):
    # Given a Task Coordinator file that cannot be written (the file, or its folder)
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "task-coordinator.db"
    make_tc(db, every_status_rows(LATER))
    digest = file_digest(db)
    target = db if what == "file" else folder
    # When it is adopted
    result = run_read_only(
        target, ["db", "adopt", "--kind", "noop", "--yes"], env_for(db, bridge_env), folder
    )
    # Then one error line naming what is not writable; nothing changed, no copy
    assert_one_error_line(result, "cannot adopt", "not writable", what)
    assert file_digest(db) == digest
    assert [p.name for p in folder.iterdir()] == ["task-coordinator.db"]


def test_the_summary_names_the_first_twenty_blocked_tasks(tmp_path, bridge_env):
    # Given 25 tasks that depend on a task the file does not hold, and one on a newline id
    db = tmp_path / "task-coordinator.db"
    rows = [
        {"id": f"orphan-{n:02}", "description": "", "status": "available", "dependencies": '["x"]'}
        for n in range(25)
    ]
    rows.append(
        {"id": NEWLINE, "description": "", "status": "working", "worker": "w\n1"},
    )
    make_tc(db, rows)
    # When it is adopted
    result = adopt(env_for(db, bridge_env), "--kind", "noop", "--yes")
    # Then the first 20 are named, the rest counted, and no id breaks a line
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    named = [line for line in lines if line.startswith("  orphan-")]
    assert len(named) == 20 and named[0].startswith("  orphan-00 (available): depends on")
    assert "  and 5 more" in lines
    assert f"  {NEWLINE!r} (working on 'w\\n1')" in lines


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
@pytest.mark.parametrize("answer", ["n", "y"])
def test_on_a_terminal_it_asks_first(tmp_path, bridge_env, answer):
    # Given a Task Coordinator file and a user at a terminal
    db = tmp_path / "task-coordinator.db"
    make_tc(db, every_status_rows(LATER))
    digest = file_digest(db)
    command = shlex.join([*BRIDGE, "db", "adopt", "--kind", "noop"])
    # When they answer the question
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        input=f"{answer}\n",
        env=env_for(db, bridge_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it was asked, and only a yes adopts
    assert "Convert it in place for bridge" in result.stdout
    copies = [p for p in tmp_path.iterdir() if ".before-bridge-" in p.name]
    if answer == "y":
        assert result.returncode == 0 and "adopted 7 task(s)" in result.stdout, result.stdout
        assert len(copies) == 1
    else:
        assert result.returncode != 0 and "not adopted" in result.stdout
        assert file_digest(db) == digest and copies == []
