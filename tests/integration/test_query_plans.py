"""The dispatcher's per-tick reads use their partial indexes, whatever the history.

A database with finished history (statistics taken then, as autovacuum would) and a
backlog added after: the planner must still read the ready tasks through
``ix_tasks_ready``, the in-flight ones through ``ix_tasks_in_flight`` and the backoff
through ``ix_tasks_backoff``, never every available (or every) task.
"""

import pytest
from sqlalchemy import text

from bridge import store
from bridge.graph import make_spec
from bridge.models import IN_FLIGHT_WHERE
from bridge.states import IN_FLIGHT
from bridge.store.claims import _CLAIMABLE_SQL
from bridge.store.dispatching import _READY_SQL

HISTORY = 3_000
BACKLOG = 500
READY = (
    _READY_SQL.format(hint="", extra=" AND pool IS NULL")
    .replace(":now", "'9999'")
    .replace(":limit", "64")
)
QUERIES = [
    ("ix_tasks_ready", READY),
    (
        "ix_tasks_ready",  # the dispatcher's, which leaves external kinds to agents
        _READY_SQL.format(hint="", extra=" AND kind NOT IN ('external') AND pool IS NULL")
        .replace(":now", "'9999'")
        .replace(":limit", "64"),
    ),
    (
        "ix_tasks_ready",  # an agent's claim
        _CLAIMABLE_SQL.format(hint="").replace(":now", "'9999'").replace(":kinds", "('external')"),
    ),
    ("ix_tasks_in_flight", f"SELECT id FROM tasks WHERE {IN_FLIGHT_WHERE}"),
    (
        "ix_tasks_in_flight",  # reconciliation, which leaves claims to their lease
        f"SELECT id FROM tasks WHERE {IN_FLIGHT_WHERE}"
        " AND (job_id IS NULL OR job_id NOT LIKE 'external-%')",
    ),
    (
        "ix_tasks_backoff",
        "SELECT min(not_before) FROM tasks WHERE status = 'available' AND not_before IS NOT NULL",
    ),
]


def test_the_in_flight_text_names_exactly_the_in_flight_statuses():
    listed = ", ".join(f"'{s.value}'" for s in sorted(IN_FLIGHT, key=lambda s: s.value))
    assert IN_FLIGHT_WHERE == f"status IN ({listed})"


def with_history_then_backlog(url: str) -> store.Engine:
    engine = store.open_engine(url)
    with store.writing(engine) as session:
        store.add_tasks(
            session=session, specs=[make_spec(task_id=f"h{i:05d}") for i in range(HISTORY)]
        )
        session.execute(text("UPDATE tasks SET status = 'done'"))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("COMMIT"))
            conn.execute(text("ANALYZE tasks"))
        else:
            conn.execute(text("ANALYZE"))
    with store.writing(engine) as session:
        store.add_tasks(
            session=session, specs=[make_spec(task_id=f"t{i:05d}") for i in range(BACKLOG)]
        )
    return engine


def plans(engine: store.Engine) -> list[tuple[str, str]]:
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (COSTS OFF) "
    with engine.connect() as conn:
        return [
            (index, "\n".join(str(row[-1]) for row in conn.execute(text(explain + sql))))
            for index, sql in QUERIES
        ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_per_tick_reads_use_their_partial_indexes(backend, tmp_path, request):
    url = (
        f"sqlite:///{tmp_path / 'p.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    engine = with_history_then_backlog(url)
    try:
        for index, plan in plans(engine):
            assert index in plan, plan
            assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    finally:
        engine.dispose()
