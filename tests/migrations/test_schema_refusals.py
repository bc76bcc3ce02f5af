"""What bridge refuses to touch, and the ``bridge db`` schema commands.

A refused file is compared byte for byte, WAL and all: opening a SQLite file through
the engine would write its journal mode into it, so refusals happen before that.
"""

import os
import sqlite3
from pathlib import Path

from helpers import bridge, file_digest, query
from sqlalchemy import create_engine, inspect
from test_schema_upgrade import env_for, make_0_1_0

from bridge import store
from bridge.store import is_task_coordinator
from bridge.store.schema import HEAD, REVISIONS

PREVIOUS = REVISIONS[-2]

TASK_COORDINATOR_DDL = """
CREATE TABLE tasks (
  id TEXT PRIMARY KEY,
  description TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('available', 'working', 'done', 'failed')),
  worker TEXT,
  dependencies TEXT,
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
INSERT INTO tasks (id, description, status, dependencies) VALUES ('a', 'first', 'done', '[]');
INSERT INTO tasks (id, description, status, worker, dependencies)
  VALUES ('b', 'second', 'working', 'w1', '["a"]');
INSERT INTO worker_slots (slot, worker_id, active, task_id) VALUES (0, 'w1', 1, 'b');
"""

COMMANDS = [("list",), ("add", "x"), ("dispatch", "--once"), ("db", "upgrade"), ("db", "current")]


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------- Task Coordinator


def test_a_task_coordinator_file_is_refused_untouched(tmp_path):
    folder = tmp_path / "tc"
    folder.mkdir()
    db = folder / "task-coordinator.db"
    conn = sqlite3.connect(db)
    conn.executescript(TASK_COORDINATOR_DDL)
    conn.close()
    before = files_in(folder)
    for command in COMMANDS:
        result = bridge(*command, env=env_for("sqlite:///task-coordinator.db"), cwd=folder)
        assert result.returncode != 0, command
        assert result.stderr == (
            "error: ./task-coordinator.db was made by the Task Coordinator;"
            " adopt it with 'bridge db adopt --kind NAME' (a copy is kept)\n"
        ), command
        assert files_in(folder) == before, command  # no byte changed, no -wal/-shm beside it


def test_is_task_coordinator_tells_the_files_apart(tmp_path):
    tc = tmp_path / "tc.db"
    conn = sqlite3.connect(tc)
    conn.executescript(TASK_COORDINATOR_DDL)
    conn.close()
    bridge_db = tmp_path / "bridge.db"
    store.open_engine(f"sqlite:///{bridge_db}").dispose()
    old = tmp_path / "old.db"
    make_0_1_0(old)
    text_file = tmp_path / "notes.db"
    text_file.write_text("not a database\n")
    digest = file_digest(tc)
    assert is_task_coordinator(str(tc))
    assert file_digest(tc) == digest
    assert not is_task_coordinator(str(bridge_db))
    assert not is_task_coordinator(str(old))
    assert not is_task_coordinator(str(text_file))
    assert not is_task_coordinator(str(tmp_path / "missing.db"))


# ----------------------------------------------------------------- newer and disabled


def test_a_database_from_a_newer_bridge_is_refused_untouched(tmp_path, db_path, db_url):
    store.open_engine(db_url).dispose()
    query(db_path, "UPDATE alembic_version SET version_num = '0099'")
    digest, names = file_digest(db_path), sorted(os.listdir(tmp_path))
    for command in [("list",), ("add", "x"), ("db", "upgrade")]:
        result = bridge(*command, env=env_for(db_url))
        assert result.returncode != 0, command
        assert result.stderr == "error: database was written by a newer bridge (schema 0099)\n"
    assert file_digest(db_path) == digest
    assert sorted(os.listdir(tmp_path)) == names
    current = bridge("db", "current", env=env_for(db_url))
    assert current.returncode == 0, current.stderr
    assert current.stdout == f"0099 (written by a newer bridge: this one knows up to {HEAD})\n"


def test_auto_migrate_off_refuses_an_older_database_untouched(tmp_path, db_path, db_url):
    make_0_1_0(db_path)
    digest = file_digest(db_path)
    env = env_for(db_url, BRIDGE_AUTO_MIGRATE="0")
    for command in [("list",), ("dispatch", "--once")]:
        result = bridge(*command, env=env)
        assert result.returncode != 0, command
        assert result.stderr == (
            f"error: database schema is at unversioned, this bridge needs {HEAD}:"
            " run 'bridge db upgrade'\n"
        )
    assert file_digest(db_path) == digest
    # The schema commands still work on it, and after the upgrade so does everything
    current = bridge("db", "current", env=env)
    assert (
        current.stdout
        == f"unversioned (not head: this bridge needs {HEAD}; run 'bridge db upgrade')\n"
    )
    assert bridge("db", "upgrade", env=env).returncode == 0
    # A stamped older revision is named by its number
    query(db_path, "UPDATE alembic_version SET version_num = '0001'")
    refused = bridge("--no-auto-migrate", "list", env=env_for(db_url))
    assert refused.stderr == (
        f"error: database schema is at 0001, this bridge needs {HEAD}: run 'bridge db upgrade'\n"
    )


def test_auto_migrate_off_still_creates_a_new_database(tmp_path, db_path, db_url):
    result = bridge("add", "a", env=env_for(db_url, BRIDGE_AUTO_MIGRATE="0"))
    assert result.returncode == 0, result.stderr
    assert query(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]


# -------------------------------------------------------------------------- --sql


def test_upgrade_sql_prints_the_upgrade_and_changes_nothing(tmp_path, db_path, db_url):
    make_0_1_0(db_path)
    digest = file_digest(db_path)
    result = bridge("db", "upgrade", "--sql", env=env_for(db_url))
    assert result.returncode == 0, result.stderr
    assert "ALTER TABLE tasks ADD COLUMN queue" in result.stdout
    assert "ALTER TABLE leases ADD COLUMN acquired_at" in result.stdout
    assert "CREATE TABLE bridge_meta" in result.stdout
    assert "UPDATE alembic_version SET version_num='0002'" in result.stdout
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in result.stdout
    assert file_digest(db_path) == digest
    # And the printed SQL, run by hand, gives the same schema as the upgrade does
    conn = sqlite3.connect(db_path)
    conn.executescript(result.stdout)
    conn.close()
    assert bridge("db", "current", env=env_for(db_url)).stdout == f"{HEAD} (head)\n"


def test_upgrade_sql_of_a_missing_database_creates_nothing(tmp_path, db_url, db_path):
    result = bridge("db", "upgrade", "--sql", env=env_for(db_url))
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE tasks" in result.stdout
    assert not db_path.exists()


def test_upgrade_sql_on_postgresql_changes_nothing(pg_url):
    result = bridge("db", "upgrade", "--sql", env=env_for(pg_url))
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE tasks" in result.stdout
    assert "CREATE INDEX ix_tasks_ready ON tasks (priority DESC, seq) WHERE" in result.stdout
    engine = create_engine(pg_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
    upgraded = bridge("db", "upgrade", env=env_for(pg_url, BRIDGE_AUTO_MIGRATE="0"))
    assert upgraded.stdout == f"created the database schema at {HEAD}\n"
    assert "alembic_version" in inspect(engine).get_table_names()
    engine.dispose()


# ---------------------------------------------------------------- current, history


def test_current_and_history(tmp_path, db_path, db_url):
    missing = bridge("db", "current", env=env_for(db_url))
    assert missing.returncode != 0
    assert missing.stderr.startswith("error: no database at ")
    history = bridge("db", "history", env=env_for(db_url))
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].startswith(f"{PREVIOUS} -> {HEAD} (head): ")
    assert lines[-1].startswith("<base> -> 0001: the schema of release 0.1.0")
    make_0_1_0(db_path)
    stamped = bridge("db", "upgrade", env=env_for(db_url))
    assert stamped.returncode == 0, stamped.stderr
    history = bridge("db", "history", env=env_for(db_url)).stdout.splitlines()
    assert history[0].startswith(f"{PREVIOUS} -> {HEAD} (head, current): ")
