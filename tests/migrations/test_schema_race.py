"""Five processes opening one database at once: all succeed and the schema work runs once.

SQLite serialises them on its write lock (the upgrade is one ``BEGIN IMMEDIATE``
transaction), PostgreSQL on a transaction-scoped advisory lock. Were the work done
twice, the second ``CREATE TABLE`` (or ``ALTER TABLE``) would fail its process.
"""

import subprocess

from helpers import BRIDGE, query
from sqlalchemy import create_engine, text
from test_schema_upgrade import TASKS, env_for, make_0_1_0

from bridge.store import migrate
from bridge.store.schema import HEAD

UPGRADED = f"database schema upgraded from unversioned to {HEAD}"


def race(commands: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Start every command at once; wait for all."""
    started = [
        subprocess.Popen(
            [*BRIDGE, *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = []
    for process, command in zip(started, commands, strict=True):
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


def assert_all_ok(results: list[subprocess.CompletedProcess]) -> None:
    for result in results:
        assert result.returncode == 0, (result.args, result.stderr)


def test_five_processes_on_a_fresh_sqlite_file(db_path, db_url):
    results = race([["add", f"t{i}"] for i in range(5)], env_for(db_url))
    assert_all_ok(results)
    assert query(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert len(query(db_path, "SELECT id FROM tasks")) == 5
    assert len(query(db_path, "SELECT value FROM bridge_meta WHERE key = 'identity'")) == 1


def test_five_processes_on_an_old_sqlite_file(db_path, db_url):
    make_0_1_0(db_path)
    results = race([["list"] for _ in range(5)], env_for(db_url))
    assert_all_ok(results)
    assert sum(UPGRADED in r.stderr for r in results) == 1
    assert query(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert len(query(db_path, "SELECT id FROM tasks")) == len(TASKS)


def test_five_processes_on_a_fresh_postgresql_database(pg_url):
    results = race([["add", f"t{i}"] for i in range(5)], env_for(pg_url))
    assert_all_ok(results)
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 5
    engine.dispose()


def test_five_processes_on_an_old_postgresql_database(pg_url):
    from alembic import command

    engine = create_engine(pg_url)
    with engine.begin() as conn:  # 0.1.0's schema, unversioned, one task
        command.upgrade(migrate.alembic_config(connection=conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text(
                "INSERT INTO tasks (id, description, status, kind, priority, attempts,"
                " max_attempts, failures, pending_deps, seq)"
                " VALUES ('old', 'from 0.1.0', 'done', 'noop', 0, 1, 1, 0, 0, 1)"
            )
        )
    results = race([["list"] for _ in range(5)], env_for(pg_url))
    assert_all_ok(results)
    assert sum(UPGRADED in r.stderr for r in results) == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
        assert conn.execute(text("SELECT id, queue FROM tasks")).all() == [("old", "bridge")]
    engine.dispose()
