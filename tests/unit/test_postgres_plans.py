"""PostgreSQL's planner takes the indexes readiness and claiming were built for.

Work per tick must grow with what changed, not with history (DESIGN, invariant 7). On
SQLite ``INDEXED BY`` pins the plan; PostgreSQL has no hints, so this checks what its
planner really chooses for the store's own statements (the very ``text()`` objects the
store runs, with real parameters), on a database whose statistics say most of 20,000
tasks are done: a Seq Scan of ``tasks`` in any of them would make every tick read the
whole history.
"""

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bridge import store
from bridge.store import dispatching, reports

DONE = 19_000
BLOCKED = 500
BACKOFF = 100
IN_FLIGHT = 300
READY = 100


@pytest.fixture(scope="module")
def history(pg_database) -> Iterator[Engine]:
    """20,000 tasks: a done chain (19,000, each depending on the one before), 500 waiting
    on a failed gate, 100 waiting out a retry backoff, 300 in flight, 100 ready; ANALYZEd."""
    pg_database.reset()
    from postgres import sqlalchemy_url

    engine = store.open_engine(sqlalchemy_url(pg_database.url))
    columns = (
        "id, description, status, kind, priority, attempts, max_attempts, failures,"
        " pending_deps, seq, queue, not_before, completed_at"
    )
    rows = [
        (DONE, "old", "'done'", "0", "NULL", "'2026-01-01 00:00:00.000000'"),
        (1, "gate", "'failed'", "0", "NULL", "'2026-01-01 00:00:00.000000'"),
        (BLOCKED, "wait", "'available'", "1", "NULL", "NULL"),
        (BACKOFF, "backoff", "'available'", "0", "'2999-01-01 00:00:00.000000'", "NULL"),
        (IN_FLIGHT, "busy", "'queued'", "0", "NULL", "NULL"),
        (READY, "ready", "'available'", "0", "NULL", "NULL"),
    ]
    with store.writing(engine) as session:
        seq = 0
        for count, prefix, status, pending, not_before, completed in rows:
            session.execute(
                text(
                    f"INSERT INTO tasks ({columns}) SELECT '{prefix}' || g, '', {status},"
                    f" 'noop', 0, 1, 1, 0, {pending}, {seq} + g, 'bridge', {not_before},"
                    f" {completed} FROM generate_series(1, {count}) AS g"
                )
            )
            seq += count
        session.execute(
            text(
                "INSERT INTO task_edges (task_id, depends_on)"
                f" SELECT 'old' || g, 'old' || (g - 1) FROM generate_series(2, {DONE}) AS g"
                f" UNION ALL SELECT 'wait' || g, 'gate1' FROM generate_series(1, {BLOCKED}) AS g"
            )
        )
        store.reset_slots(session=session, slots=IN_FLIGHT + 10)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    yield engine
    engine.dispose()


def plan(engine: Engine, statement, **params) -> str:
    with engine.connect() as conn:
        rows = conn.execute(text("EXPLAIN " + statement.text), params).all()
    return "\n".join(r[0] for r in rows)


def assert_index(found: str, index: str) -> None:
    assert index in found, found
    assert "Seq Scan on tasks" not in found, found


def test_ready_query_uses_the_partial_index(history):
    found = plan(history, dispatching._READY["other"], now=store.now(), limit=10)
    assert_index(found, "ix_tasks_ready")


def test_claim_takes_the_ready_tasks_only(history):
    # The plan is the one that really runs: a claim finds exactly the 10 oldest ready tasks.
    with store.writing(history) as session:
        claimed = store.claim_ready(session=session, slots=IN_FLIGHT + 10)
        assert [d.task_id for d in claimed] == [f"ready{i}" for i in range(1, 11)]
        session.rollback()


def test_next_backoff_query_uses_the_backoff_index(history):
    query = text(
        "SELECT min(not_before) FROM tasks WHERE status = 'available' AND not_before IS NOT NULL"
    )
    assert_index(plan(history, query), "ix_tasks_backoff")


def test_unblocking_dependents_uses_the_edge_index(history):
    found = plan(history, reports._UNBLOCK, dep="old500")
    assert "ix_task_edges_depends_on" in found, found
    assert "Seq Scan" not in found, found


def test_tasks_in_flight_are_found_by_status(history):
    query = text("SELECT id FROM tasks WHERE status IN ('queued', 'working')")
    assert_index(plan(history, query), "ix_tasks_in_flight")


def test_counting_ready_tasks_reads_only_waiting_tasks(history):
    # ``bridge wait`` and ``bridge run`` count ready tasks: through the partial index of
    # ready tasks, never reading the done ones.
    query = text("SELECT count(*) FROM tasks WHERE status = 'available' AND pending_deps = 0")
    found = plan(history, query)
    assert "ix_tasks_ready" in found, found
    assert "Seq Scan on tasks" not in found, found
