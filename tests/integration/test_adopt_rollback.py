"""A conversion that fails half way leaves the Task Coordinator file as it was, and no copy."""

import hashlib
import sqlite3
from pathlib import Path

import pytest

from bridge import store
from bridge.store import StoreError
from bridge.store import adopt as adoption


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tc_file(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE tasks (id TEXT PRIMARY KEY, description TEXT NOT NULL,
              status TEXT NOT NULL CHECK (status IN ('available', 'working', 'done', 'failed')),
              worker TEXT, dependencies TEXT, output TEXT, error TEXT, started_at TEXT,
              completed_at TEXT, created_at TEXT DEFAULT CURRENT_TIMESTAMP);
            CREATE TABLE worker_slots (slot INTEGER PRIMARY KEY, worker_id TEXT,
              active INTEGER NOT NULL DEFAULT 0, task_id TEXT,
              updated_at TEXT DEFAULT CURRENT_TIMESTAMP);
            INSERT INTO tasks (id, description, status) VALUES ('a', 'A', 'done');
            INSERT INTO tasks (id, description, status, dependencies, worker)
              VALUES ('b', 'B', 'working', '["a", "ghost"]', 'w1');
            INSERT INTO worker_slots (slot, worker_id, active, task_id) VALUES (1, 'w1', 1, 'b');
            """
        )
    conn.close()


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), sqlite3.OperationalError("x")])
def test_a_failure_after_the_conversion_rolls_it_all_back(tmp_path, monkeypatch, failure):
    # Given a Task Coordinator file, and a conversion that fails after doing all its work
    db = tmp_path / "task-coordinator.db"
    _tc_file(db)
    before = _digest(db)
    real = adoption._convert

    def convert_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise failure

    monkeypatch.setattr(adoption, "_convert", convert_then_fail)
    # When it is adopted
    with pytest.raises((RuntimeError, StoreError)):
        adoption.adopt(str(db), "noop")
    # Then the file is byte for byte as it was and no copy (nor journal) is left
    assert _digest(db) == before
    assert [p.name for p in tmp_path.iterdir()] == ["task-coordinator.db"]
    assert store.is_task_coordinator(str(db))


def test_the_plan_reads_without_writing(tmp_path):
    db = tmp_path / "task-coordinator.db"
    _tc_file(db)
    before = _digest(db)
    plan = adoption.plan_adoption(str(db))
    assert plan.total == 2 and [r.task_id for r in plan.reopened] == ["b"]
    assert [(b.task_id, b.reason) for b in plan.blocked] == [
        ("b", "depends on unknown task(s) 'ghost'")
    ]
    assert _digest(db) == before and [p.name for p in tmp_path.iterdir()] == [db.name]


def test_the_converted_file_is_exactly_the_0_1_0_schema(tmp_path):
    # Given a Task Coordinator file with an index of its own
    db = tmp_path / "task-coordinator.db"
    _tc_file(db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE INDEX idx_tasks_status ON tasks (status)")
    conn.close()
    # When it is converted (before bridge opens it the usual way)
    adoption.adopt(str(db), "noop")
    # Then its schema is what bridge 0.1.0 made, object for object, nothing else
    with sqlite3.connect(db) as conn:
        schema = {
            sql for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
        }
    conn.close()
    assert schema == set(adoption.SCHEMA_0_1_0)
