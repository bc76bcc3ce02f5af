"""Databases made before schema revisions existed are recognised, stamped and upgraded
without losing a row; the revisions and the models agree on SQLite and PostgreSQL.

The 0.1.0 schema is frozen below as release 0.1.0 created it on SQLite (commit f33af29);
its very first commit (d8e28c6) made the same minus ``ix_tasks_backoff``.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import bridge, query
from sqlalchemy import create_engine, event, inspect, text
from sqlmodel import SQLModel

from bridge import (
    models,  # noqa: F401  (the tables, on SQLModel.metadata)
    store,
)
from bridge.store import migrate
from bridge.store.schema import HEAD, REVISIONS, ensure_schema

DDL_0_1_0 = """
CREATE TABLE leases (
	name VARCHAR NOT NULL,
	holder VARCHAR NOT NULL,
	expires_at FLOAT NOT NULL,
	PRIMARY KEY (name)
);
CREATE TABLE task_edges (
	task_id VARCHAR NOT NULL,
	depends_on VARCHAR NOT NULL,
	PRIMARY KEY (task_id, depends_on),
	FOREIGN KEY(task_id) REFERENCES tasks (id),
	FOREIGN KEY(depends_on) REFERENCES tasks (id)
);
CREATE TABLE task_events (
	id INTEGER NOT NULL,
	task_id VARCHAR NOT NULL,
	from_status VARCHAR,
	to_status VARCHAR NOT NULL,
	attempt INTEGER NOT NULL,
	worker VARCHAR,
	at VARCHAR NOT NULL,
	detail TEXT,
	PRIMARY KEY (id),
	FOREIGN KEY(task_id) REFERENCES tasks (id)
);
CREATE TABLE tasks (
	id VARCHAR NOT NULL,
	description VARCHAR NOT NULL,
	status VARCHAR NOT NULL,
	worker VARCHAR,
	dependencies TEXT,
	output TEXT,
	error TEXT,
	started_at VARCHAR,
	completed_at VARCHAR,
	created_at VARCHAR DEFAULT CURRENT_TIMESTAMP,
	kind VARCHAR NOT NULL,
	payload TEXT,
	priority INTEGER NOT NULL,
	attempts INTEGER NOT NULL,
	max_attempts INTEGER NOT NULL,
	failures INTEGER NOT NULL,
	timeout INTEGER,
	pending_deps INTEGER NOT NULL,
	seq INTEGER NOT NULL,
	job_id VARCHAR,
	queued_at VARCHAR,
	not_before VARCHAR,
	updated_at VARCHAR,
	note TEXT,
	PRIMARY KEY (id)
);
CREATE TABLE worker_slots (
	slot INTEGER NOT NULL,
	worker_id VARCHAR,
	active INTEGER DEFAULT '0' NOT NULL,
	task_id VARCHAR,
	updated_at VARCHAR DEFAULT CURRENT_TIMESTAMP,
	PRIMARY KEY (slot)
);
CREATE INDEX ix_task_edges_depends_on ON task_edges (depends_on);
CREATE INDEX ix_task_events_task_id ON task_events (task_id);
CREATE INDEX ix_tasks_backoff ON tasks (not_before)
	WHERE status = 'available' AND not_before IS NOT NULL;
CREATE INDEX ix_tasks_ready ON tasks (priority DESC, seq)
	WHERE status = 'available' AND pending_deps = 0;
CREATE INDEX ix_tasks_seq ON tasks (seq);
CREATE INDEX ix_tasks_status ON tasks (status);
"""

BACKOFF_INDEX = re.compile(r"CREATE INDEX ix_tasks_backoff[^;]*;")
DDL_D8E28C6 = BACKOFF_INDEX.sub("", DDL_0_1_0)

TASK_COLUMNS = (
    "id, description, status, worker, dependencies, output, error, started_at, completed_at,"
    " created_at, kind, payload, priority, attempts, max_attempts, failures, timeout,"
    " pending_deps, seq, job_id, queued_at, not_before, updated_at, note"
)

T0 = "2025-03-01 10:00:00.000000"
T1 = "2025-03-01 10:00:01.500000"
LATER = "2099-01-01 00:00:00.000000"

# Every state 0.1.0 knew, as 0.1.0 wrote them (job ids named the attempt: ``-a<n>``).
TASKS = [
    # id, description, status, worker, dependencies, output, error, started, completed,
    # created, kind, payload, priority, attempts, max, failures, timeout, pending, seq,
    # job_id, queued_at, not_before, updated_at, note
    ("ready", "waits for a slot", "available", None, "[]", None, None, None, None,
     T0, "noop", None, 0, 0, 1, 0, None, 0, 1, None, None, None, T0, None),
    ("backoff", "retrying later", "available", None, "[]", None, "ValueError: flaky",
     T0, T1, T0, "flaky", '{"n": 1}', 5, 1, 3, 1, 30, 0, 2, "bridge-backoff-1f2e3d4c5b6a7988-a1",
     T0, LATER, T1, "attempt 1 failed (ValueError: flaky); retry 2 of 3"),
    ("queued", "sent to Redis", "queued", None, "[]", None, None, None, None,
     T0, "noop", None, 0, 1, 1, 0, None, 0, 3, "bridge-queued-0a0b0c0d0e0f1011-a1",
     T1, None, T1, None),
    ("working", "running now", "working", "rq:worker:host.1", "[]", None, None, T1, None,
     T0, "sleep", '{"seconds": 5}', 0, 1, 1, 0, 60, 0, 4,
     "bridge-working-1111222233334444-a1", T0, None, T1, None),
    ("done", "finished", "done", "rq:worker:host.1", "[]", '{"ok": true, "n": 3}', None,
     T0, T1, T0, "noop", None, 0, 1, 1, 0, None, 0, 5, "bridge-done-5555666677778888-a1",
     T0, None, T1, None),
    ("failed", "gave up", "failed", "rq:worker:host.2", "[]", None,
     "Traceback (most recent call last):\n  ...\nRuntimeError: no", T0, T1, T0, "boom",
     None, 0, 2, 2, 2, None, 0, 6, "bridge-failed-9999aaaabbbbcccc-a2", T0, None, T1,
     "attempt 2 failed (RuntimeError: no)"),
    ("cancelled", "stopped by a user", "cancelled", None, "[]", None, None, None, T1,
     T0, "noop", None, 0, 0, 1, 0, None, 1, 7, None, None, None, T1, "cancelled by the user"),
    ("blocked", "after the failed one", "available", None, '["failed", "done"]', None,
     None, None, None, T0, "noop", None, -2, 0, 1, 0, None, 1, 8, None, None, None, T0, None),
    ("ünï/cødé id", "payload and odd id", "available", None, '["done"]', None, None, None,
     None, T0, "echo", '{"text": "ß\\u00e9 \\"q\\""}', 9, 0, 1, 0, None, 0, 9, None, None,
     None, T0, None),
]  # fmt: skip
EDGES = [("blocked", "failed"), ("blocked", "done"), ("ünï/cødé id", "done")]
EVENTS = [
    (1, "ready", None, "available", 0, None, T0, "added"),
    (2, "queued", "available", "queued", 1, None, T1, "dispatched"),
    (3, "working", "queued", "working", 1, "rq:worker:host.1", T1, "started"),
    (4, "done", "working", "done", 1, "rq:worker:host.1", T1, None),
    (5, "failed", "working", "failed", 2, "rq:worker:host.2", T1, "RuntimeError: no"),
    (6, "backoff", "working", "available", 1, None, T1, "retry in 30s"),
    (7, "cancelled", "available", "cancelled", 0, None, T1, "cancelled"),
    (8, "done", "done", "done", 1, "rq:worker:host.9", T1, "ignored: stale report"),
]
SLOTS = [
    (0, "rq:worker:host.1", 1, "working", T1),
    (1, None, 1, "queued", T1),
    (2, None, 0, None, T0),
]
LEASES = [("dispatcher", "host:4242:abcd", 1741000000.25)]


def make_0_1_0(path: Path, ddl: str = DDL_0_1_0) -> None:
    """A database as 0.1.0 left it: its DDL, every state, edges, events, slots, a lease."""
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    conn.executemany(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({', '.join('?' * 24)})", TASKS)
    conn.executemany("INSERT INTO task_edges VALUES (?, ?)", EDGES)
    conn.executemany("INSERT INTO task_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", EVENTS)
    conn.executemany("INSERT INTO worker_slots VALUES (?, ?, ?, ?, ?)", SLOTS)
    conn.executemany("INSERT INTO leases VALUES (?, ?, ?)", LEASES)
    conn.commit()
    conn.close()


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "BRIDGE_DATABASE_URL": url,
        "BRIDGE_REDIS_URL": "redis://127.0.0.1:1/0",
        **extra,
    }


def assert_every_row_kept(db: Path) -> None:
    """Each 0.1.0 row is there unchanged; the new columns have their defaults."""
    tasks = query(db, f"SELECT {TASK_COLUMNS}, queue FROM tasks ORDER BY seq")
    assert tasks == [(*row, "bridge") for row in TASKS]
    assert sorted(query(db, "SELECT task_id, depends_on FROM task_edges")) == sorted(EDGES)
    assert query(db, "SELECT * FROM task_events ORDER BY id") == EVENTS
    assert query(db, "SELECT * FROM worker_slots ORDER BY slot") == SLOTS
    leases = query(db, "SELECT name, holder, expires_at, acquired_at FROM leases")
    assert leases == [(*row, None) for row in LEASES]
    meta = dict(query(db, "SELECT key, value FROM bridge_meta"))
    assert set(meta) == {"identity", "next_token"}
    assert re.fullmatch(r"[0-9a-f]{32}", meta["identity"])
    assert meta["next_token"] == "1"  # 0.1.0's job ids never carried a token
    assert query(db, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def schema_diff(url: str) -> list:
    """What Alembic's autogenerate finds between the database and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        engine.dispose()


def sqlite_schema(db: Path) -> list[tuple]:
    return query(db, "SELECT type, name, tbl_name FROM sqlite_master ORDER BY name")


# --------------------------------------------------------------------- 0.1.0 databases


@pytest.mark.parametrize("ddl", [DDL_0_1_0, DDL_D8E28C6], ids=["0.1.0", "d8e28c6"])
def test_a_0_1_0_database_is_upgraded_by_any_command_without_loss(tmp_path, ddl):
    # Given a database 0.1.0 made (no version table), filled through every state
    db = tmp_path / "task-coordinator.db"
    make_0_1_0(db, ddl)
    # When a plain read command opens it
    result = bridge("list", "--json", env=env_for(f"sqlite:///{db}"))
    # Then it lists every task, and the file is stamped at head with every row kept
    assert result.returncode == 0, result.stderr
    assert {t["id"]: t["status"] for t in json.loads(result.stdout)} == {
        row[0]: row[2] for row in TASKS
    }
    assert f"database schema upgraded from unversioned to {HEAD}" in result.stderr
    assert_every_row_kept(db)
    # And the upgraded file has exactly the schema a fresh database gets (the backoff
    # index the first commit lacked included)
    fresh = tmp_path / "fresh.db"
    store.open_engine(f"sqlite:///{fresh}").dispose()
    assert sqlite_schema(db) == sqlite_schema(fresh)
    assert schema_diff(f"sqlite:///{db}") == []


def test_a_0_1_0_database_is_upgraded_by_db_upgrade(tmp_path):
    db = tmp_path / "old.db"
    make_0_1_0(db)
    env = env_for(f"sqlite:///{db}", BRIDGE_AUTO_MIGRATE="0")
    result = bridge("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"upgraded the database schema from unversioned to {HEAD}"
    assert_every_row_kept(db)
    # The upgraded database works: tasks can be added
    assert bridge("add", "new", env=env).returncode == 0
    again = bridge("db", "upgrade", env=env)
    assert again.stdout.strip() == f"database schema is at {HEAD} (head): nothing to do"


def test_an_unversioned_in_between_database_keeps_its_identity_and_tokens(tmp_path):
    # Given a database changed in place after 0.1.0 (queue column, bridge_meta with
    # identity and tokens already handed out), but without acquired_at or a version table
    db = tmp_path / "between.db"
    make_0_1_0(db)
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'bridge';
        UPDATE tasks SET queue = 'other' WHERE id = 'queued';
        UPDATE tasks SET job_id = 'bridge-queued-0123456789ab-t41' WHERE id = 'queued';
        CREATE TABLE bridge_meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL, PRIMARY KEY (key));
        INSERT INTO bridge_meta VALUES ('identity', '0123456789abcdef0123456789abcdef');
        INSERT INTO bridge_meta VALUES ('next_token', '42');
        """
    )
    conn.close()
    # When a command opens it
    result = bridge("list", env=env_for(f"sqlite:///{db}"))
    # Then it is upgraded: identity and next token kept, the missing column added
    assert result.returncode == 0, result.stderr
    assert dict(query(db, "SELECT key, value FROM bridge_meta")) == {
        "identity": "0123456789abcdef0123456789abcdef",
        "next_token": "42",
    }
    assert query(db, "SELECT queue FROM tasks WHERE id = 'queued'") == [("other",)]
    assert query(db, "SELECT acquired_at FROM leases") == [(None,)]
    assert query(db, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_tokens_start_above_every_token_a_job_id_carries(tmp_path):
    # Given an unversioned database whose job ids carry tokens but which has no next_token
    db = tmp_path / "tokens.db"
    make_0_1_0(db)
    query(db, "UPDATE tasks SET job_id = 'bridge-done-0123456789ab-t7' WHERE id = 'done'")
    query(db, "UPDATE tasks SET job_id = 'bridge-failed-0123456789ab-t12' WHERE id = 'failed'")
    # When it is upgraded
    store.open_engine(f"sqlite:///{db}").dispose()
    # Then no token in use can be handed out again
    assert query(db, "SELECT value FROM bridge_meta WHERE key = 'next_token'") == [("13",)]


# ------------------------------------------------------------- revisions and the models


def test_the_revisions_this_bridge_knows_are_the_shipped_ones():
    script = migrate.script_directory()
    assert script.get_current_head() == HEAD
    assert [s.revision for s in script.walk_revisions()] == list(reversed(REVISIONS))


def test_models_and_migrations_agree_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    store.open_engine(url).dispose()
    assert schema_diff(url) == []


def test_models_and_migrations_agree_on_postgresql(pg_url):
    store.open_engine(pg_url).dispose()
    assert schema_diff(pg_url) == []
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
        partial = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_tasks_ready'")
        ).scalar_one()
    engine.dispose()
    assert "WHERE" in partial and "DESC" in partial


def test_a_0_1_0_database_on_postgresql_is_upgraded_without_loss(pg_url):
    # Given a PostgreSQL database with 0.1.0's schema (revision 0001) and no version table
    from alembic import command

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(connection=conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("DROP INDEX ix_tasks_backoff"))  # as the first commit made it
        values = ", ".join(f":p{i}" for i in range(24))
        conn.execute(
            text(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({values})"),
            [{f"p{i}": value for i, value in enumerate(row)} for row in TASKS],
        )
        conn.execute(
            text("INSERT INTO task_edges VALUES (:a, :b)"), [{"a": a, "b": b} for a, b in EDGES]
        )
        conn.execute(text("INSERT INTO leases VALUES ('dispatcher', 'h', 1.5)"))
    # When a command opens it
    result = bridge("list", env=env_for(pg_url))
    # Then every row is kept, the schema is the models' and it is at head
    assert result.returncode == 0, result.stderr
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {TASK_COLUMNS}, queue FROM tasks ORDER BY seq")).all()
        assert [tuple(r) for r in rows] == [(*row, "bridge") for row in TASKS]
        assert conn.execute(text("SELECT count(*) FROM task_edges")).scalar() == len(EDGES)
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    engine.dispose()
    assert schema_diff(pg_url) == []


# ------------------------------------------------------------------ the cost at head


def test_at_head_the_check_is_one_query(tmp_path):
    url = f"sqlite:///{tmp_path / 'head.db'}"
    engine = store.open_engine(url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    ensure_schema(engine)
    engine.dispose()
    assert [s for s in statements if s != "BEGIN"] == ["SELECT version_num FROM alembic_version"]


def test_opening_a_database_at_head_does_not_load_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'head.db'}"
    store.open_engine(url).dispose()
    code = (
        "import sys; from bridge import store;"
        f" store.open_engine({url!r}, create=False).dispose();"
        " print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_inspect_sees_the_fresh_schema_with_every_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    engine = store.open_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}


# ----------------------------------------------------- upgrading in a caller's transaction


def test_upgrade_in_a_callers_transaction_is_undone_by_its_rollback(tmp_path):
    # Given a 0.1.0 database opened the way ``bridge db adopt`` opens a file it converts
    db = tmp_path / "adopted.db"
    make_0_1_0(db)
    engine = store.open_engine(f"sqlite:///{db}", check_schema=False)
    assert "bridge_meta" not in inspect(engine).get_table_names()
    # When the upgrade runs in the caller's transaction, which then fails
    with pytest.raises(RuntimeError, match="adopt failed later"):
        with engine.execution_options(bridge_write=True).begin() as conn:
            before, after = migrate.upgrade_in(conn)
            assert (before.kind, after.kind) == ("unversioned", "head")
            raise RuntimeError("adopt failed later")
    # Then nothing of the upgrade is left
    tables = {row[0] for row in query(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "alembic_version" not in tables and "bridge_meta" not in tables
    assert "queue" not in {row[1] for row in query(db, "PRAGMA table_info(tasks)")}
    # And when it commits, the database is at head with every row kept
    with engine.execution_options(bridge_write=True).begin() as conn:
        migrate.upgrade_in(conn)
    engine.dispose()
    assert_every_row_kept(db)


def test_a_database_stamped_0001_is_upgraded_and_its_sql_starts_from_there(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'at-0001.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(connection=conn), "0001")
    engine.dispose()
    looked = migrate.look(url)
    assert (looked.state.kind, looked.state.shown) == ("older", "0001")
    sql = migrate.upgrade_sql(looked)
    assert "ALTER TABLE tasks ADD COLUMN queue" in sql
    assert "CREATE TABLE alembic_version" not in sql and "CREATE TABLE tasks" not in sql
    store.open_engine(url).dispose()
    assert migrate.look(url).state.kind == "head"
    assert schema_diff(url) == []
