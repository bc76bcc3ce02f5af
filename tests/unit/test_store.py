"""The store against real databases: adding graphs, readiness, fencing, admin, leases.

Every test runs on a SQLite file of its own under ``tmp_path`` and on an empty
PostgreSQL database (``both_backends``); time passing is simulated by
moving ``not_before`` with plain SQL.
"""

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from bridge import graph, store
from bridge.graph import GraphError, TaskSpec, make_spec
from bridge.messages import Report, decode_output, job_id_for
from bridge.states import BACKOFF_BASE, TRANSITION_KINDS, ReportKind, TaskStatus
from bridge.store import dispatching

pytestmark = pytest.mark.both_backends

SLOTS = 4


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def db_file(db_path: Path) -> Path:
    """The SQLite file (of ``db_url`` when the test runs on SQLite)."""
    return db_path


@pytest.fixture
def engine(db_url):
    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        store.reset_slots(session=session, slots=SLOTS)
    yield engine
    engine.dispose()


def t(task_id, *deps, **kw) -> TaskSpec:
    return make_spec(task_id=task_id, dependencies=deps, **kw)


def add(engine, *specs, **kw) -> store.AddResult:
    with store.writing(engine) as session:
        return store.add_tasks(session=session, specs=list(specs), **kw)


def claim(engine, slots=SLOTS):
    with store.writing(engine) as session:
        return store.claim_ready(session=session, slots=slots)


def claim_ids(engine, slots=SLOTS) -> list[str]:
    return [d.task_id for d in claim(engine, slots)]


def apply(engine, *reports, **kw) -> list[store.Applied]:
    with store.writing(engine) as session:
        return store.apply_reports(session=session, reports=list(reports), **kw)


def reset(engine, slots=SLOTS) -> list[str]:
    with store.writing(engine) as session:
        return store.reset_slots(session=session, slots=slots)


def row(engine, task_id) -> dict:
    with store.reading(engine) as session:
        found = session.execute(select(store.TASKS).where(store.TASKS.c.id == task_id)).one()
        return dict(found._mapping)


def status(engine, task_id) -> str:
    return row(engine, task_id)["status"]


def sql(engine, query, **params) -> list[tuple]:
    with store.reading(engine) as session:
        return [tuple(r) for r in session.execute(text(query), params)]


def write_sql(engine, query, **params) -> None:
    with store.writing(engine) as session:
        session.execute(text(query), params)


def events(engine, task_id) -> list[tuple]:
    return sql(
        engine,
        "SELECT from_status, to_status, attempt, detail FROM task_events"
        " WHERE task_id = :t ORDER BY id",
        t=task_id,
    )


def slot_table(engine) -> list[tuple]:
    return sql(engine, "SELECT slot, active, task_id, worker_id FROM worker_slots ORDER BY slot")


def busy_slots(engine) -> dict[str, str | None]:
    return {task: worker for _, active, task, worker in slot_table(engine) if active}


def snapshot(engine) -> tuple:
    """Everything but the audit trail."""
    return (
        sql(engine, "SELECT * FROM tasks ORDER BY id"),
        sql(engine, "SELECT * FROM task_edges ORDER BY task_id, depends_on"),
        sql(engine, "SELECT * FROM worker_slots ORDER BY slot"),
    )


def namespace(engine) -> str:
    with store.reading(engine) as session:
        return store.namespace(session=session)


def token(d) -> int:
    return int(d.job_id.rsplit("-t", 1)[1])


def started(d, worker="w1") -> Report:
    return Report(d.task_id, d.attempt, ReportKind.STARTED, d.job_id, worker=worker)


def succeeded(d, output='"ok"', worker="w1") -> Report:
    return Report(
        d.task_id, d.attempt, ReportKind.SUCCEEDED, d.job_id, worker=worker, output=output
    )


def failed(d, error="ValueError: boom", worker="w1") -> Report:
    return Report(d.task_id, d.attempt, ReportKind.FAILED, d.job_id, worker=worker, error=error)


def run_to_done(engine, task_id):
    (d,) = [d for d in claim(engine) if d.task_id == task_id]
    apply(engine, started(d), succeeded(d))
    return d


def digest(path: Path) -> str:
    data = path.read_bytes()
    wal = Path(f"{path}-wal")
    if wal.exists():
        data += wal.read_bytes()
    return hashlib.sha256(data).hexdigest()


def utc_stamp(delta_seconds: float) -> str:
    return store.stamp(datetime.now(timezone.utc) + timedelta(seconds=delta_seconds))


def assert_only_an_ignored_event(engine, task_id, action):
    """``action`` must change nothing but append one 'ignored' event for ``task_id``."""
    before = snapshot(engine)
    events_before = events(engine, task_id)
    results = action()
    assert snapshot(engine) == before
    after = events(engine, task_id)
    assert after[: len(events_before)] == events_before
    (new,) = after[len(events_before) :]
    from_status, to_status, _attempt, detail = new
    assert to_status == from_status
    assert detail.startswith("ignored")
    assert all(result.target is None for result in results)
    return new


# --------------------------------------------------------------------------- engine


def tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_open_engine_creates_the_seed_schema(engine, db_file, backend):
    assert db_file.exists() == (backend == "sqlite")
    assert {"tasks", "worker_slots", "task_edges", "task_events", "leases"} <= tables(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("tasks")}
    assert {
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
    } <= columns
    if backend == "sqlite":
        assert sql(engine, "PRAGMA journal_mode") == [("wal",)]


def test_open_engine_in_a_missing_directory_is_a_store_error(tmp_path):
    with pytest.raises(store.StoreError, match="does not exist"):
        store.open_engine(f"sqlite:///{tmp_path / 'nope' / 't.db'}")


def test_open_engine_of_a_bad_url_is_a_store_error():
    with pytest.raises(store.StoreError, match="not a database URL"):
        store.open_engine("this is not a url")


# --------------------------------------------------------------------------- adding


def test_add_creates_available_tasks_edges_and_one_event_each(engine):
    # When a small graph is added
    result = add(engine, t("a", description="first", kind="echo", payload={"k": [1]}), t("b", "a"))
    # Then both are stored as available, in order, with their edges and an 'added' event
    assert result.added == ["a", "b"] and result.skipped == []
    a, b = row(engine, "a"), row(engine, "b")
    assert (a["status"], a["kind"], a["payload"], a["description"]) == (
        "available",
        "echo",
        '{"k": [1]}',
        "first",
    )
    assert (a["attempts"], a["failures"], a["max_attempts"]) == (0, 0, 1)
    assert b["dependencies"] == '["a"]'
    assert a["seq"] < b["seq"]
    assert sql(engine, "SELECT task_id, depends_on FROM task_edges") == [("b", "a")]
    assert events(engine, "a") == [(None, "available", 0, "added")]
    assert events(engine, "b") == [(None, "available", 0, "added")]


def test_adding_an_existing_id_is_refused(engine):
    add(engine, t("a"))
    with pytest.raises(GraphError, match="task 'a' already exists"):
        add(engine, t("new"), t("a"))
    assert sql(engine, "SELECT id FROM tasks") == [("a",)]


def _thousand_tasks_then(bad: TaskSpec) -> list[TaskSpec]:
    chain = [t("n0")] + [t(f"n{i}", f"n{i - 1}") for i in range(1, 999)]
    return chain + [bad]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        # refused by the graph check, before any INSERT
        (t("bad", "ghost"), "task 'bad' depends on unknown task 'ghost'"),
        (t("n500"), "duplicate task id 'n500'"),
        (t("n0", "n998"), "duplicate task id 'n0'"),
        (t("bad", "bad"), "depends on itself"),
        # Built without make_spec: the repeated dependency passes the graph checks and
        # fails on the edge table's primary key, i.e. after the task rows were inserted.
        (TaskSpec(id="bad", dependencies=("n0", "n0")), "already exists"),
    ],
    ids=["unknown-dependency", "duplicate-id", "duplicate-id-2", "self", "fails-after-insert"],
)
def test_bulk_add_is_all_or_nothing(db_file, bad, message):
    # Given a database holding one task, closed so its file is settled
    url = f"sqlite:///{db_file}"
    engine = store.open_engine(url)
    add(engine, t("existing"))
    engine.dispose()
    before = digest(db_file)
    # When 1000 tasks are added and only the last one is bad
    engine = store.open_engine(url)
    with pytest.raises(GraphError, match=message):
        add(engine, *_thousand_tasks_then(bad))
    assert sql(engine, "SELECT count(*) FROM tasks") == [(1,)]
    assert sql(engine, "SELECT count(*) FROM task_edges") == [(0,)]
    assert sql(engine, "SELECT count(*) FROM task_events") == [(1,)]
    engine.dispose()
    # Then not one byte of the database changed
    assert digest(db_file) == before


def test_add_refuses_a_cycle_and_stores_nothing(engine):
    add(engine, t("stored"))
    before = snapshot(engine)
    with pytest.raises(GraphError, match="dependency cycle"):
        add(engine, t("ok", "stored"), t("x", "z", "stored"), t("y", "x"), t("z", "y"))
    assert snapshot(engine) == before


def test_add_refuses_an_oversize_payload(engine):
    with pytest.raises(GraphError, match="over the limit of 100"):
        add(engine, t("ok"), t("big", payload="x" * 200), max_payload=100)
    assert sql(engine, "SELECT count(*) FROM tasks") == [(0,)]
    add(engine, t("small", payload="x" * 50), max_payload=100)


def test_new_tasks_may_depend_on_stored_tasks(engine):
    add(engine, t("a"))
    add(engine, t("b", "a"))
    assert row(engine, "b")["pending_deps"] == 1


def test_bulk_add_of_a_thousand_good_tasks_is_one_transaction(engine):
    result = add(engine, *_thousand_tasks_then(t("last", "n998")))
    assert len(result.added) == 1000
    assert sql(engine, "SELECT count(*), sum(pending_deps) FROM tasks") == [(1000, 999)]
    assert sql(engine, "SELECT count(*) FROM task_events") == [(1000,)]


def test_skip_same_readd_skips_identical_tasks_and_adds_new_ones(engine):
    add(engine, t("a", kind="echo", payload=[1]), t("b", "a"))
    result = add(engine, t("a", kind="echo", payload=[1]), t("b", "a"), t("c", "b"), skip_same=True)
    assert result.skipped == ["a", "b"]
    assert result.added == ["c"]
    assert row(engine, "c")["pending_deps"] == 1
    assert len(events(engine, "a")) == 1


@pytest.mark.parametrize(
    "changed",
    [
        t("a", kind="noop", payload=[1]),
        t("a", kind="echo", payload=[2]),
        t("a", kind="echo", payload=[1], priority=1),
        t("a", kind="echo", payload=[1], description="other"),
        t("a", kind="echo", payload=[1], max_attempts=2),
    ],
)
def test_skip_same_refuses_a_changed_definition(engine, changed):
    add(engine, t("a", kind="echo", payload=[1]))
    before = snapshot(engine)
    with pytest.raises(GraphError, match="'a' already exists with a different definition"):
        add(engine, t("z"), changed, skip_same=True)
    assert snapshot(engine) == before


def test_pending_deps_counts_unfinished_dependencies(engine):
    # Given 'done0' already done and a diamond a -> (b, c) -> d
    add(engine, t("done0"))
    run_to_done(engine, "done0")
    add(engine, t("a"), t("b", "a"), t("c", "a"), t("d", "b", "c", "done0"), t("e", "done0"))
    pending = dict(sql(engine, "SELECT id, pending_deps FROM tasks"))
    # Then a dependency already done does not count
    assert pending == {"done0": 0, "a": 0, "b": 1, "c": 1, "d": 2, "e": 0}


# --------------------------------------------------------------------------- readiness


def test_only_tasks_whose_dependencies_are_all_done_are_claimed(engine):
    add(engine, t("a"), t("b", "a"), t("c", "a"), t("d", "b", "c"))
    # Only the root is ready
    assert claim_ids(engine) == ["a"]
    assert claim_ids(engine) == []
    # a done -> b and c become ready, d still waits
    apply(engine, succeeded(_dispatch_of(engine, "a")))
    assert dict(sql(engine, "SELECT id, pending_deps FROM tasks")) == {
        "a": 0,
        "b": 0,
        "c": 0,
        "d": 2,
    }
    dispatches = claim(engine)
    assert sorted(d.task_id for d in dispatches) == ["b", "c"]
    # b done -> d still needs c
    apply(engine, succeeded(next(d for d in dispatches if d.task_id == "b")))
    assert claim_ids(engine) == []
    assert row(engine, "d")["pending_deps"] == 1
    apply(engine, succeeded(next(d for d in dispatches if d.task_id == "c")))
    assert claim_ids(engine) == ["d"]


def _dispatch_of(engine, task_id):
    r = row(engine, task_id)
    assert r["status"] in ("queued", "working")
    return store.Dispatch(
        task_id, r["attempts"], r["job_id"], r["kind"], r["payload"], r["timeout"]
    )


def test_claim_takes_higher_priority_first_then_insertion_order(engine):
    add(
        engine,
        t("low"),
        t("high1", priority=5),
        t("mid", priority=1),
        t("neg", priority=-2),
        t("high2", priority=5),
        t("low2"),
    )
    assert claim_ids(engine, slots=2) == ["high1", "high2"]
    assert claim_ids(engine, slots=SLOTS) == ["mid", "low"]


def test_claim_order_among_many_equal_priorities_is_insertion_order(engine):
    ids = [f"t{i:03d}" for i in range(50)][::-1]  # insertion order is not alphabetical
    add(engine, *[t(i) for i in ids])
    reset(engine, slots=50)
    assert claim_ids(engine, slots=50) == ids


def test_claim_respects_the_number_of_free_slots(engine):
    add(engine, *[t(f"t{i}") for i in range(10)])
    first = claim(engine, slots=3)
    assert len(first) == 3
    assert claim(engine, slots=3) == []  # every slot busy
    assert len(busy_slots(engine)) == 3
    # one finishes -> exactly one more
    apply(engine, succeeded(first[0]))
    assert len(claim(engine, slots=3)) == 1
    # more slots configured -> more claimed
    assert len(claim(engine, slots=SLOTS)) == 1


def test_claim_marks_queued_with_a_new_attempt_and_occupies_a_slot(engine):
    add(engine, t("a", kind="echo", payload={"x": 1}, timeout=30))
    (d,) = claim(engine)
    assert (d.task_id, d.attempt, d.kind, d.payload, d.timeout) == ("a", 1, "echo", '{"x": 1}', 30)
    assert (d.queue, d.namespace) == ("bridge", namespace(engine))
    assert d.job_id == job_id_for("a", d.namespace, int(d.job_id.rsplit("-t", 1)[1]))
    r = row(engine, "a")
    assert (r["status"], r["attempts"], r["job_id"]) == ("queued", 1, d.job_id)
    assert r["queued_at"] is not None
    assert busy_slots(engine) == {"a": None}
    assert events(engine, "a")[-1] == ("available", "queued", 1, "dispatched")


def test_cancelled_dependency_keeps_dependents_blocked_and_counts_stay_right(engine):
    add(engine, t("a"), t("b", "a"))
    with store.writing(engine) as session:
        store.cancel_task(session=session, task_id="b")
    run_to_done(engine, "a")
    # b was cancelled while waiting; its count still followed a
    assert row(engine, "b")["pending_deps"] == 0
    with store.writing(engine) as session:
        store.retry_task(session=session, task_id="b")
    assert claim_ids(engine) == ["b"]


# --------------------------------------------------------------------------- reports


def test_full_lifecycle_events_one_row_per_transition(engine):
    add(engine, t("a"), t("b", "a"))
    (d,) = claim(engine)
    results = apply(engine, started(d, worker="host.1"))
    assert [r.target for r in results] == [TaskStatus.WORKING]
    assert busy_slots(engine) == {"a": "host.1"}
    r = row(engine, "a")
    assert (r["status"], r["worker"]) == ("working", "host.1")
    assert r["started_at"] is not None

    apply(engine, succeeded(d, output='{"answer": 42}', worker="host.1"))
    r = row(engine, "a")
    assert (r["status"], r["output"], r["error"]) == ("done", '{"answer": 42}', None)
    assert r["completed_at"] is not None
    # the slot is free and the dependent is ready
    assert busy_slots(engine) == {}
    assert row(engine, "b")["pending_deps"] == 0

    history = events(engine, "a")
    assert [(f, to) for f, to, _, _ in history] == [
        (None, "available"),
        ("available", "queued"),
        ("queued", "working"),
        ("working", "done"),
    ]
    for earlier, later in zip(history, history[1:], strict=False):
        assert later[0] == earlier[1], "each event starts where the previous one ended"


def test_done_without_a_start_report_is_applied(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    apply(engine, succeeded(d))
    assert status(engine, "a") == "done"
    assert [(f, to) for f, to, _, _ in events(engine, "a")][-1] == ("queued", "done")


def test_start_and_success_in_one_batch(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    results = apply(engine, started(d), succeeded(d))
    assert [r.target for r in results] == [TaskStatus.WORKING, TaskStatus.DONE]
    assert status(engine, "a") == "done"
    assert len(events(engine, "a")) == 4


def test_duplicate_start_report_changes_nothing(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    apply(engine, started(d))
    new = assert_only_an_ignored_event(engine, "a", lambda: apply(engine, started(d, "other")))
    assert new[:3] == ("working", "working", 1)
    assert "duplicate" in new[3]


def test_duplicate_success_report_changes_nothing(engine):
    add(engine, t("a"), t("b", "a"))
    (d,) = claim(engine)
    apply(engine, succeeded(d, output='"first"'))
    new = assert_only_an_ignored_event(
        engine, "a", lambda: apply(engine, succeeded(d, output='"second"'))
    )
    assert new[:2] == ("done", "done")
    # the dependent was counted down once, not twice
    assert row(engine, "b")["pending_deps"] == 0
    assert row(engine, "a")["output"] == '"first"'


def test_failure_after_done_changes_nothing(engine):
    add(engine, t("a", max_attempts=3))
    (d,) = claim(engine)
    apply(engine, succeeded(d))
    assert_only_an_ignored_event(engine, "a", lambda: apply(engine, failed(d)))


@pytest.mark.parametrize("kind", TRANSITION_KINDS)
def test_late_report_after_cancel_changes_nothing(engine, kind):
    # Given a task cancelled while its job was in flight
    add(engine, t("a"), t("b", "a"))
    (d,) = claim(engine)
    with store.writing(engine) as session:
        cancelled = store.cancel_task(session=session, task_id="a")
    assert cancelled.job_id == d.job_id
    # When the worker still reports for the current attempt
    late = Report("a", d.attempt, kind, d.job_id, worker="w", output='"x"', error="E: x")
    new = assert_only_an_ignored_event(engine, "a", lambda: apply(engine, late))
    # Then it is recorded as ignored and the task stays cancelled
    assert new[:2] == ("cancelled", "cancelled")
    assert "cancelled" in new[3]
    assert status(engine, "a") == "cancelled"


@pytest.mark.parametrize("kind", TRANSITION_KINDS)
def test_stale_attempt_report_changes_nothing(engine, kind):
    # Given a task whose job was lost and re-sent as attempt 2
    add(engine, t("a"), t("b", "a"))
    (d1,) = claim(engine)
    apply(engine, started(d1))
    with store.writing(engine) as session:
        (d2,) = store.redispatch(
            session=session, tasks=store.in_flight(session=session), reason="job lost"
        )
    assert d2.attempt == 2
    # When the old attempt reports
    old = Report("a", 1, kind, d1.job_id, worker="w", output='"old"', error="E: old")
    new = assert_only_an_ignored_event(engine, "a", lambda: apply(engine, old))
    # Then nothing but an 'ignored' event is written
    assert new[:3] == ("queued", "queued", 1)
    assert "stale" in new[3]


def test_report_for_an_unknown_task_is_ignored_without_an_event(engine):
    add(engine, t("a"))
    before = snapshot(engine)
    (result,) = apply(engine, Report("ghost", 1, ReportKind.SUCCEEDED, "j"))
    assert result.target is None
    assert result.reason == "unknown task"
    assert snapshot(engine) == before
    assert sql(engine, "SELECT count(*) FROM task_events WHERE task_id = 'ghost'") == [(0,)]


def test_failure_with_attempts_left_waits_out_its_backoff(engine):
    # Given a task allowed 3 attempts, and a dependent
    add(engine, t("a", max_attempts=3), t("b", "a"))
    (d1,) = claim(engine)
    apply(engine, started(d1))
    # When its first attempt fails
    (result,) = apply(engine, failed(d1, error="ValueError: boom\nmore"))
    # Then it is available again, with a failure counted and a backoff set
    assert result.target is TaskStatus.AVAILABLE
    r = row(engine, "a")
    assert r["status"] == "available"
    assert (r["failures"], r["attempts"]) == (1, 1)
    assert r["error"] == "ValueError: boom\nmore"
    assert r["not_before"] is not None
    due = datetime.strptime(r["not_before"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
    wait = (due - datetime.now(timezone.utc)).total_seconds()
    assert 0 < wait <= BACKOFF_BASE
    assert busy_slots(engine) == {}
    assert row(engine, "b")["pending_deps"] == 1
    assert events(engine, "a")[-1][:3] == ("working", "available", 1)
    with store.reading(engine) as session:
        assert store.next_wakeup(session=session) == r["not_before"]
    # and it is not claimable before not_before
    assert claim(engine) == []
    # When the backoff has passed
    write_sql(engine, "UPDATE tasks SET not_before = :t WHERE id = 'a'", t=utc_stamp(-1))
    # Then it is dispatched again as attempt 2
    (d2,) = claim(engine)
    assert (d2.task_id, d2.attempt) == ("a", 2)
    assert row(engine, "a")["not_before"] is None


def test_last_failure_fails_the_task_and_blocks_its_dependents(engine):
    add(engine, t("a", max_attempts=3), t("b", "a"))
    for attempt in (1, 2, 3):
        (d,) = claim(engine)
        assert d.attempt == attempt
        (result,) = apply(engine, started(d), failed(d, error=f"E: {attempt}"))[1:]
        write_sql(
            engine, "UPDATE tasks SET not_before = :t WHERE not_before IS NOT NULL", t=utc_stamp(-1)
        )
    assert result.target is TaskStatus.FAILED
    r = row(engine, "a")
    assert (r["status"], r["failures"], r["error"]) == ("failed", 3, "E: 3")
    assert r["completed_at"] is not None
    assert claim(engine) == []
    b = row(engine, "b")
    assert (b["status"], b["pending_deps"]) == ("available", 1)
    transitions = [(f, to) for f, to, _, _ in events(engine, "a")]
    assert transitions == [
        (None, "available"),
        *[("available", "queued"), ("queued", "working"), ("working", "available")] * 2,
        ("available", "queued"),
        ("queued", "working"),
        ("working", "failed"),
    ]


def test_second_failure_waits_longer(engine):
    add(engine, t("a", max_attempts=5))
    (d1,) = claim(engine)
    apply(engine, failed(d1))
    write_sql(engine, "UPDATE tasks SET not_before = :t", t=utc_stamp(-1))
    (d2,) = claim(engine)
    apply(engine, failed(d2))
    due = row(engine, "a")["not_before"]
    assert due > utc_stamp(BACKOFF_BASE)  # the second backoff is 2 * base
    assert due <= utc_stamp(2 * BACKOFF_BASE)


def test_failure_traceback_is_kept_in_the_event(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    report = Report(
        "a", 1, ReportKind.FAILED, d.job_id, error="KeyError: 'x'", traceback="Traceback: ..."
    )
    apply(engine, report)
    detail = events(engine, "a")[-1][3]
    assert "KeyError: 'x'" in detail and "Traceback: ..." in detail


def test_oversize_output_and_error_are_truncated(engine):
    add(engine, t("a"), t("b"))
    da, db = claim(engine)
    apply(engine, succeeded(da, output="x" * 5000), failed(db, error="E" * 5000), max_output=1024)
    assert len(row(engine, "a")["output"].encode()) <= 1024
    assert len(row(engine, "b")["error"].encode()) <= 1024
    assert "[truncated" in row(engine, "b")["error"]


# --------------------------------------------------------------------------- admin


def _put_in(engine, task_id, state):
    """Drive ``task_id`` (max_attempts 1) into ``state`` through the public operations."""
    if state == "available":
        return
    (d,) = [d for d in claim(engine) if d.task_id == task_id]
    if state == "working":
        apply(engine, started(d))
    elif state == "done":
        apply(engine, succeeded(d))
    elif state == "failed":
        apply(engine, failed(d))
    elif state == "cancelled":
        with store.writing(engine) as session:
            store.cancel_task(session=session, task_id=task_id)


@pytest.mark.parametrize("state", ["available", "queued", "working", "done"])
def test_retry_is_refused_unless_failed_or_cancelled(engine, state):
    add(engine, t("a"))
    _put_in(engine, "a", state)
    before = snapshot(engine)
    with pytest.raises(store.TaskStateError, match=f"cannot retry task 'a': it is {state}"):
        with store.writing(engine) as session:
            store.retry_task(session=session, task_id="a")
    assert snapshot(engine) == before


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_retry_reopens_a_failed_or_cancelled_task(engine, state):
    add(engine, t("a"), t("b", "a"))
    _put_in(engine, "a", state)
    attempts = row(engine, "a")["attempts"]
    with store.writing(engine) as session:
        task = store.retry_task(session=session, task_id="a")
        assert task.status == "available"
    r = row(engine, "a")
    assert (r["status"], r["failures"], r["not_before"], r["error"]) == ("available", 0, None, None)
    assert r["attempts"] == attempts, "the attempt counter (fencing token) never goes back"
    assert events(engine, "a")[-1][:2] == (state, "available")
    # and the graph resumes
    run_to_done(engine, "a")
    assert claim_ids(engine) == ["b"]


def test_retry_of_an_unknown_task_is_refused(engine):
    with pytest.raises(store.TaskStateError, match="no task 'ghost'"):
        with store.writing(engine) as session:
            store.retry_task(session=session, task_id="ghost")


@pytest.mark.parametrize("state", ["done", "failed", "cancelled"])
def test_cancel_of_a_finished_task_is_refused(engine, state):
    add(engine, t("a"))
    _put_in(engine, "a", state)
    before = snapshot(engine)
    with pytest.raises(store.TaskStateError, match=f"it is already {state}"):
        with store.writing(engine) as session:
            store.cancel_task(session=session, task_id="a")
    assert snapshot(engine) == before


@pytest.mark.parametrize("state", ["available", "queued", "working"])
def test_cancel_stops_a_waiting_or_in_flight_task_and_frees_its_slot(engine, state):
    add(engine, t("a"), t("b", "a"))
    _put_in(engine, "a", state)
    job_id = row(engine, "a")["job_id"]
    with store.writing(engine) as session:
        cancelled = store.cancel_task(session=session, task_id="a")
    assert cancelled.previous is TaskStatus(state)
    assert cancelled.job_id == (job_id if state != "available" else None)
    assert status(engine, "a") == "cancelled"
    assert busy_slots(engine) == {}
    assert events(engine, "a")[-1][:2] == (state, "cancelled")
    b = row(engine, "b")
    assert (b["status"], b["pending_deps"]) == ("available", 1)


def test_cancel_of_an_unknown_task_is_refused(engine):
    with pytest.raises(store.TaskStateError, match="no task"):
        with store.writing(engine) as session:
            store.cancel_task(session=session, task_id="ghost")


# --------------------------------------------------------------------------- slots


def test_reset_slots_rebuilds_the_slot_table_from_tasks_in_flight(engine):
    # Given two tasks in flight (one working on w7) and one done
    add(engine, t("a"), t("b"), t("c"), t("d"))
    da, db, dc = claim(engine, slots=3)
    apply(engine, started(db, worker="w7"), succeeded(dc))
    # and a slot table that no longer matches (e.g. a crash mid-way)
    write_sql(engine, "UPDATE worker_slots SET active = 1, task_id = 'junk', worker_id = 'x'")
    # When the slots are reset for 5 slots
    in_flight = reset(engine, slots=5)
    # Then exactly the tasks in flight hold a slot, with their worker
    assert sorted(in_flight) == ["a", "b"]
    table = slot_table(engine)
    assert [slot for slot, *_ in table] == [1, 2, 3, 4, 5]
    assert busy_slots(engine) == {"a": None, "b": "w7"}
    # and the free slots are claimable again
    assert claim_ids(engine, slots=5) == ["d"]


def test_reset_slots_keeps_a_slot_for_every_task_in_flight_even_above_the_limit(engine):
    add(engine, *[t(f"t{i}") for i in range(4)])
    claim(engine, slots=4)
    assert sorted(reset(engine, slots=2)) == ["t0", "t1", "t2", "t3"]
    assert len(slot_table(engine)) == 4
    assert len(busy_slots(engine)) == 4
    add(engine, t("more"))
    assert claim(engine, slots=2) == []


def test_reset_slots_shrinks_the_table(engine):
    reset(engine, slots=8)
    assert len(slot_table(engine)) == 8
    assert reset(engine, slots=3) == []
    assert slot_table(engine) == [(1, 0, None, None), (2, 0, None, None), (3, 0, None, None)]


# --------------------------------------------------------------------------- redispatch


def test_redispatch_bumps_the_attempt_and_fences_off_the_old_one(engine):
    add(engine, t("a"), t("b", "a"))
    (d1,) = claim(engine)
    apply(engine, started(d1, worker="w1"))
    with store.writing(engine) as session:
        flights = store.in_flight(session=session)
        assert [(f.task_id, f.status, f.attempt, f.job_id) for f in flights] == [
            ("a", TaskStatus.WORKING, 1, d1.job_id)
        ]
        (d2,) = store.redispatch(session=session, tasks=flights, reason="job lost")
    # Then a new attempt with a new job id is queued
    assert (d2.task_id, d2.attempt) == ("a", 2)
    assert token(d2) > token(d1)
    assert d2.job_id != d1.job_id
    r = row(engine, "a")
    assert (r["status"], r["attempts"], r["job_id"], r["worker"]) == ("queued", 2, d2.job_id, None)
    assert r["failures"] == 0, "a lost job is not a failure"
    assert events(engine, "a")[-1][1:] == ("queued", 2, "job lost")
    # The old attempt's success is ignored...
    assert_only_an_ignored_event(engine, "a", lambda: apply(engine, succeeded(d1)))
    assert row(engine, "b")["pending_deps"] == 1
    # ...and the new attempt's is applied
    apply(engine, started(d2), succeeded(d2))
    assert status(engine, "a") == "done"
    assert row(engine, "b")["pending_deps"] == 0


def test_redispatch_skips_tasks_resolved_meanwhile(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    with store.reading(engine) as session:
        flights = store.in_flight(session=session)
    apply(engine, succeeded(d))  # resolved after the snapshot was taken
    before = snapshot(engine)
    with store.writing(engine) as session:
        assert store.redispatch(session=session, tasks=flights, reason="job lost") == []
    assert snapshot(engine) == before


def test_redispatch_event_records_the_real_previous_status(engine):
    add(engine, t("a"))
    (d1,) = claim(engine)
    apply(engine, started(d1))
    with store.writing(engine) as session:
        store.redispatch(session=session, tasks=store.in_flight(session=session), reason="lost")
    from_status, to_status, _, _ = events(engine, "a")[-1]
    assert (from_status, to_status) == ("working", "queued")
    assert {f for f, *_ in events(engine, "a") if f is not None} <= {s.value for s in TaskStatus}


# --------------------------------------------------------------------------- leases


def lease(engine, holder, clock, ttl=10.0):
    with store.writing(engine) as session:
        return store.acquire_lease(
            session=session, name="dispatcher", holder=holder, ttl=ttl, clock=clock
        )


def holder(engine):
    with store.reading(engine) as session:
        return store.lease_holder(session=session, name="dispatcher")


def test_lease_is_exclusive_until_it_expires(engine):
    assert holder(engine) is None
    assert lease(engine, "A", clock=100.0)
    assert holder(engine) == ("A", 110.0)
    # a second holder is refused while the lease is live
    assert not lease(engine, "B", clock=105.0)
    assert not lease(engine, "B", clock=110.0)  # expiry is not yet passed
    assert holder(engine) == ("A", 110.0)
    # the holder renews it
    assert lease(engine, "A", clock=109.0)
    assert holder(engine) == ("A", 119.0)
    assert not lease(engine, "B", clock=118.9)
    # after expiry the other takes over, and the first is now refused
    assert lease(engine, "B", clock=119.5)
    assert holder(engine) == ("B", 129.5)
    assert not lease(engine, "A", clock=120.0)


def test_lease_release_only_by_its_holder(engine):
    lease(engine, "A", clock=0.0)
    with store.writing(engine) as session:
        store.release_lease(session=session, name="dispatcher", holder="B")
    assert holder(engine)[0] == "A"
    with store.writing(engine) as session:
        store.release_lease(session=session, name="dispatcher", holder="A")
    assert holder(engine) is None
    assert lease(engine, "B", clock=1.0)


# --------------------------------------------------------------------------- odd ids


ODD_IDS = [
    "x'); DROP TABLE tasks;--",
    "it's",
    'say "hi"',
    "line\nbreak",
    "cr\r\nlf",
    "tab\tstop",
    "ünïcødé ✓ 任务 🚀",
    "%s %(x)s :name ?",
    "back\\slash",
    " leading and trailing ",
    "'; DELETE FROM task_events WHERE '1'='1",
]


def test_odd_ids_round_trip_exactly(engine):
    # Given tasks with hostile ids depending on each other
    specs = [t(ODD_IDS[0])] + [
        t(i, ODD_IDS[0], description=i, payload={i: [i]}) for i in ODD_IDS[1:]
    ]
    add(engine, *specs)
    reset(engine, slots=len(ODD_IDS))
    # Then every id, description and payload comes back unchanged
    with store.reading(engine) as session:
        listed = store.list_tasks(session=session)
        assert [task.id for task in listed] == ODD_IDS
        for task in listed[1:]:
            assert store.task_dict(task)["payload"] == {task.id: [task.id]}
            assert task.description == task.id
            assert store.dependency_states(session=session, task_id=task.id) == [
                (ODD_IDS[0], "available")
            ]
    # and they run through dispatch and reports
    (d0,) = claim(engine, slots=len(ODD_IDS))
    assert d0.task_id == ODD_IDS[0]
    apply(engine, succeeded(d0))
    dispatches = claim(engine, slots=len(ODD_IDS))
    assert [d.task_id for d in dispatches] == ODD_IDS[1:]
    apply(engine, *[succeeded(d, output=f'"{i}"') for i, d in enumerate(dispatches)])
    with store.reading(engine) as session:
        assert {task.id: task.status for task in store.list_tasks(session=session)} == {
            i: "done" for i in ODD_IDS
        }
        for task_id in ODD_IDS:
            assert store.get_task(session=session, task_id=task_id).id == task_id
            trail = store.list_events(session=session, task_id=task_id)
            assert [e.to_status for e in trail] == ["available", "queued", "done"]
    # and no SQL in them ever ran
    assert {"tasks", "task_events", "task_edges", "worker_slots"} <= tables(engine)
    assert sql(engine, "SELECT count(*) FROM task_events") == [(len(ODD_IDS) * 3,)]


def test_odd_ids_work_in_admin_commands(engine):
    add(engine, *[t(i) for i in ODD_IDS])
    with store.writing(engine) as session:
        for task_id in ODD_IDS:
            store.cancel_task(session=session, task_id=task_id)
    with store.writing(engine) as session:
        for task_id in ODD_IDS:
            assert store.retry_task(session=session, task_id=task_id).id == task_id
    assert sql(engine, "SELECT count(*) FROM tasks WHERE status = 'available'") == [(len(ODD_IDS),)]


# --------------------------------------------------------------------------- progress


def prog(engine) -> store.Progress:
    with store.reading(engine) as session:
        return store.progress(session=session)


def test_progress_of_a_fresh_graph(engine):
    add(engine, t("a"), t("b"), t("c", "a"))
    p = prog(engine)
    assert p.total == 3
    assert p.count(TaskStatus.AVAILABLE) == 3
    assert p.ready == 2
    assert not p.finished
    assert not p.stuck


def test_progress_finished_when_every_task_is_done(engine):
    add(engine, t("a"), t("b", "a"))
    run_to_done(engine, "a")
    assert not prog(engine).finished
    run_to_done(engine, "b")
    p = prog(engine)
    assert p.finished and not p.stuck
    assert p.count(TaskStatus.DONE) == 2


@pytest.mark.parametrize("bad_state", ["failed", "cancelled"])
def test_progress_stuck_when_only_blocked_tasks_remain(engine, bad_state):
    add(engine, t("a"), t("b", "a"), t("c", "b"))
    _put_in(engine, "a", bad_state)
    p = prog(engine)
    assert p.stuck
    assert not p.finished
    assert p.ready == 0


def test_progress_not_stuck_while_something_is_in_flight(engine):
    add(engine, t("bad"), t("blocked", "bad"), t("slow"))
    d_bad, d_slow = claim(engine)
    apply(engine, failed(d_bad))
    assert not prog(engine).stuck
    apply(engine, succeeded(d_slow))
    assert prog(engine).stuck


def test_progress_not_stuck_while_something_is_ready(engine):
    add(engine, t("bad"), t("blocked", "bad"))
    _put_in(engine, "bad", "failed")
    add(engine, t("independent"))
    p = prog(engine)
    assert p.ready == 1
    assert not p.stuck


def test_progress_not_stuck_while_a_retry_waits_out_its_backoff(engine):
    add(engine, t("bad"), t("flaky", max_attempts=3))
    d_bad, d_flaky = claim(engine)
    apply(engine, failed(d_bad), failed(d_flaky))
    assert row(engine, "flaky")["not_before"] is not None
    assert not prog(engine).stuck


def test_progress_failed_task_alone_is_stuck_not_finished(engine):
    add(engine, t("a"))
    _put_in(engine, "a", "failed")
    p = prog(engine)
    assert p.stuck and not p.finished


# --------------------------------------------------------------------------- history


@pytest.fixture
def big_history(engine):
    """3000 done tasks, 500 waiting on a failed gate, and 3 ready ones."""
    add(engine, *[t(f"old{i}") for i in range(3000)])
    write_sql(engine, "UPDATE tasks SET status = 'done'")
    add(engine, t("gate"), *[t(f"wait{i}", "gate") for i in range(500)])
    write_sql(engine, "UPDATE tasks SET status = 'failed' WHERE id = 'gate'")
    add(engine, t("r1"), t("r2", priority=1), t("r3"))
    return engine


def _ready_plan(engine) -> str:
    query = dispatching._READY["sqlite"].text
    rows = sql(engine, "EXPLAIN QUERY PLAN " + query, now=store.now(), limit=SLOTS)
    return " | ".join(r[3] for r in rows)


def test_claim_ready_with_a_long_history_claims_only_ready_tasks(big_history):
    assert claim_ids(big_history) == ["r2", "r1", "r3"]
    assert claim_ids(big_history) == []


@pytest.mark.sqlite_only  # PostgreSQL's plans: tests/unit/test_postgres_plans.py
def test_ready_query_uses_the_partial_index_with_statistics_too(big_history):
    write_sql(big_history, "ANALYZE")
    assert "ix_tasks_ready" in _ready_plan(big_history)


@pytest.mark.sqlite_only  # PostgreSQL's plans: tests/unit/test_postgres_plans.py
def test_claim_ready_uses_the_partial_index(big_history):
    assert "ix_tasks_ready" in _ready_plan(big_history)


# --------------------------------------------------------------------------- fencing tokens


def test_tokens_are_unique_over_the_database_life_across_clean_and_re_added_ids(engine):
    # Given a task dispatched, then everything cleaned and the same id added again
    add(engine, t("a"))
    (old,) = claim(engine)
    with store.writing(engine) as session:
        cleaned = store.clean(session=session)
    assert cleaned.in_flight == [(old.job_id, "bridge")]
    add(engine, t("a"))
    (new,) = claim(engine)
    # Then the new attempt is attempt 1 again, but its job id (its token) is new
    assert (old.attempt, new.attempt) == (1, 1)
    assert token(new) > token(old) and new.job_id != old.job_id
    # And the old attempt's success cannot complete the new task
    apply(engine, succeeded(old))
    assert status(engine, "a") == "queued"
    apply(engine, succeeded(new))
    assert status(engine, "a") == "done"


def test_every_database_has_its_own_namespace(tmp_path):
    engines = [store.open_engine(f"sqlite:///{tmp_path / name}") for name in ("x.db", "y.db")]
    assert namespace(engines[0]) != namespace(engines[1])
    assert namespace(engines[0]) == namespace(store.open_engine(f"sqlite:///{tmp_path / 'x.db'}"))


def test_lowering_slots_claims_nothing_until_in_flight_drops_below_the_new_limit(engine):
    # Given four tasks in flight under four slots, and more waiting
    add(engine, *(t(f"t{n}") for n in range(8)))
    running = claim(engine, slots=4)
    assert len(running) == 4
    # When the limit is lowered to two
    # Then nothing new is claimed while three or four are in flight
    assert claim(engine, slots=2) == []
    apply(engine, succeeded(running[0]))
    assert claim(engine, slots=2) == []
    apply(engine, succeeded(running[1]))
    assert claim(engine, slots=2) == []
    # And one is claimed once in flight is below two
    apply(engine, succeeded(running[2]))
    assert len(claim(engine, slots=2)) == 1
    assert len(busy_slots(engine)) == 2


def test_a_fresh_database_raced_by_several_processes_is_created_once(tmp_path):
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'race.db'}"
    code = (
        "import sys; from bridge import store\n"
        "e = store.open_engine(sys.argv[1])\n"
        "with store.reading(e) as s: print(store.namespace(session=s))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6
    assert len(set(outputs)) == 1 and outputs[0]


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("first", ["report", "add"])
def test_adding_a_dependent_while_its_dependency_finishes_never_loses_the_wakeup(engine, first):
    """``bridge add`` of a task on a stored dependency, while the dispatcher commits that
    dependency's success in another transaction: whichever writes first, the new task
    ends up ready. (On PostgreSQL, READ COMMITTED lets the two interleave: the add read
    the dependency as still working, the dispatcher's unblocking did not see the new edge,
    and the task waited forever for a dependency that was done.)"""
    import threading

    add(engine, t("a"))
    (d,) = claim(engine)
    apply(engine, started(d))
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def report() -> None:
        try:
            with store.writing(engine) as session:
                store.apply_reports(session=session, reports=[succeeded(d)])
                holding.set()
                release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            holding.set()

    def add_dependent() -> None:
        try:
            with store.writing(engine) as session:
                store.add_tasks(session=session, specs=[t("b", "a")])
                holding.set()
                release.wait(10)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            holding.set()

    one, other = (report, add_dependent) if first == "report" else (add_dependent, report)
    first_thread = threading.Thread(target=one)
    first_thread.start()
    assert holding.wait(10)
    holding.clear()
    second_thread = threading.Thread(target=other)
    second_thread.start()
    time.sleep(0.3)  # the second one is now running into the first one's transaction
    release.set()
    first_thread.join(15)
    second_thread.join(15)
    assert not errors, errors
    assert status(engine, "a") == "done"
    assert row(engine, "b")["pending_deps"] == 0
    assert claim_ids(engine) == ["b"]


def test_any_driver_error_in_a_write_is_one_line_not_a_traceback(pg_url):
    # Given a PostgreSQL database
    engine = store.open_engine(pg_url, create=True)
    try:
        # When a statement fails with an error that is not an OperationalError
        with pytest.raises(store.StoreError) as caught:
            with store.writing(engine) as session:
                session.execute(text("SELECT 1 / 0"))
        # Then it is a StoreError of one line, without the SQL the driver appends
        assert "division by zero" in str(caught.value)
        assert "\n" not in str(caught.value)
        assert "SELECT" not in str(caught.value)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- handler context


def progress_report(d, fraction, message=None) -> Report:
    return Report(
        d.task_id,
        d.attempt,
        ReportKind.PROGRESS,
        d.job_id,
        "w1",
        progress=fraction,
        message=message,
    )


def log_report(d, *messages) -> Report:
    lines = [["2026-01-01 00:00:00.000000", "INFO", m] for m in messages]
    return Report(d.task_id, d.attempt, ReportKind.LOG, d.job_id, "w1", lines=json.dumps(lines))


def decoded(d) -> dict | None:
    """A dispatch's inputs as the handler's ``ctx.inputs`` sees them."""
    return None if d.inputs is None else {k: decode_output(v) for k, v in d.inputs.items()}


def finish_with(engine, outputs: dict) -> None:
    """Claim what is ready (exactly the tasks of ``outputs``) and finish each with its output."""
    claimed = claim(engine)
    assert {d.task_id for d in claimed} == set(outputs)
    apply(engine, *[succeeded(d, output=json.dumps(outputs[d.task_id])) for d in claimed])


def test_a_fan_in_carries_each_dependencys_output_under_its_id(engine):
    # Given two done dependencies (one returned None) and a fan-in over them
    add(engine, t("a"), t("b"))
    finish_with(engine, {"a": {"n": [1, 2]}, "b": None})
    add(engine, t("sum", "a", "b"), t("lone"))
    # When the fan-in is claimed
    (fan_in, lone) = claim(engine)
    # Then its job carries the outputs, decoded, keyed by dependency id
    assert fan_in.task_id == "sum"
    assert decoded(fan_in) == {"a": {"n": [1, 2]}, "b": None}
    assert fan_in.inputs == {"a": '{"n": [1, 2]}', "b": "null"}  # as stored: not decoded
    assert (fan_in.run, fan_in.local_id, fan_in.max_attempts) == (
        row(engine, "sum")["run"],
        None,
        1,
    )
    # And a task without dependencies carries none
    assert lone.inputs is None


def test_in_a_scoped_run_inputs_and_the_task_are_named_as_the_graph_wrote_them(engine):
    # Given a task of another run and a scoped run whose fan-in waits on both
    add(engine, t("shared"))
    finish_with(engine, {"shared": 5})
    specs = graph.scope([t("a"), t("total", "a", "shared", max_attempts=3)], "r1")
    with store.writing(engine) as session:
        store.create_run(session=session, name="r1", scoped=1)
        store.add_tasks(session=session, specs=specs, run="r1")
    finish_with(engine, {"r1/a": "x"})
    # When the fan-in is claimed
    (d,) = claim(engine)
    # Then its own dependency is named as written, the other run's by its stored id
    assert d.task_id == "r1/total"
    assert (d.local_id, d.run, d.max_attempts) == ("total", "r1", 3)
    assert decoded(d) == {"a": "x", "shared": 5}


def test_an_output_that_is_not_json_is_passed_on_as_text(engine):
    add(engine, t("a"), t("b", "a"))
    finish_with(engine, {"a": 1})
    write_sql(engine, "UPDATE tasks SET output = 'not json' WHERE id = 'a'")
    (d,) = claim(engine)
    assert decoded(d) == {"a": "not json"}


def test_a_fan_in_whose_inputs_are_too_large_fails_at_dispatch_naming_the_largest(engine):
    # Given a fan-in whose dependencies' outputs total more than the limit
    add(engine, t("small"), t("big"))
    finish_with(engine, {"small": "x" * 100, "big": "y" * 1000})
    add(engine, t("sum", "small", "big"), t("other"))
    # When the dispatcher claims with a limit of 1000 bytes
    with store.writing(engine) as session:
        claimed = store.claim_ready(session=session, slots=SLOTS, max_inputs=1000)
    # Then the fan-in is not sent: it failed, saying which dependency is largest
    assert [d.task_id for d in claimed] == ["other"]
    task = row(engine, "sum")
    assert task["status"] == "failed"
    assert task["attempts"] == 0 and task["job_id"] is None
    assert task["error"] == (
        "inputs too large: 'big' is 1002 bytes, the inputs total 1104,"
        " over the limit of 1000 (BRIDGE_MAX_INPUTS)"
    )
    assert events(engine, "sum")[-1][:2] == ("available", "failed")
    assert events(engine, "sum")[-1][3].startswith("failed at dispatch: inputs too large")
    # And it holds no slot
    assert set(busy_slots(engine)) == {"other"}
    # And once the limit allows it, retry sends it
    with store.writing(engine) as session:
        store.retry_task(session=session, task_id="sum")
    with store.writing(engine) as session:
        (d,) = store.claim_ready(session=session, slots=SLOTS, max_inputs=2000)
    assert d.task_id == "sum" and set(d.inputs) == {"small", "big"}


def test_a_claim_whose_every_ready_task_is_too_large_sends_nothing(engine):
    add(engine, t("big"))
    finish_with(engine, {"big": "y" * 100})
    add(engine, t("sum", "big"))
    with store.writing(engine) as session:
        assert store.claim_ready(session=session, slots=SLOTS, max_inputs=10) == []
    assert status(engine, "sum") == "failed"
    assert busy_slots(engine) == {}


def test_progress_counts_only_for_the_current_attempt_in_flight_and_a_new_attempt_clears_it(
    engine,
):
    # Given a running task
    add(engine, t("a"))
    (d1,) = claim(engine)
    apply(engine, started(d1))
    # When its handler reports progress
    (noted,) = apply(engine, progress_report(d1, 0.4, "downloading"))
    # Then it is kept, with no audit row and no change of state
    assert noted.target is None
    assert (row(engine, "a")["progress"], row(engine, "a")["progress_message"]) == (
        0.4,
        "downloading",
    )
    assert events(engine, "a")[-1][:2] == ("queued", "working")
    # When the job is lost and sent again, the new attempt starts with no progress
    with store.writing(engine) as session:
        (d2,) = store.redispatch(
            session=session, tasks=store.in_flight(session=session), reason="job lost"
        )
    assert row(engine, "a")["progress"] is None
    # And the old attempt's progress is dropped quietly
    before = events(engine, "a")
    apply(engine, progress_report(d1, 0.9, "stale"))
    assert row(engine, "a")["progress"] is None
    assert events(engine, "a") == before
    # And a progress arriving in the same batch before the outcome is kept
    apply(engine, progress_report(d2, 1.0, "last"), succeeded(d2))
    assert (row(engine, "a")["status"], row(engine, "a")["progress"]) == ("done", 1.0)
    # And one arriving after the task finished changes nothing
    apply(engine, progress_report(d2, 0.1, "late"))
    assert row(engine, "a")["progress_message"] == "last"


def test_log_lines_are_kept_with_their_attempt_for_the_tasks_own_job_only(engine):
    add(engine, t("a", max_attempts=2))
    (d1,) = claim(engine)
    apply(engine, log_report(d1, "one", "two"), failed(d1))
    write_sql(engine, "UPDATE tasks SET not_before = NULL WHERE id = 'a'")
    (d2,) = claim(engine)
    # A line of the first attempt arriving now is not the task's own job any more
    apply(engine, log_report(d1, "stale"), log_report(d2, "three"), succeeded(d2))
    apply(engine, log_report(d2, "after the outcome, same job"))
    with store.reading(engine) as session:
        lines = store.list_logs(session=session, task_id="a")
        second = store.list_logs(session=session, task_id="a", attempt=2)
    assert [(x.attempt, x.level, x.message) for x in lines] == [
        (1, "INFO", "one"),
        (1, "INFO", "two"),
        (2, "INFO", "three"),
        (2, "INFO", "after the outcome, same job"),
    ]
    assert [x.message for x in second] == ["three", "after the outcome, same job"]


def test_malformed_log_lines_are_dropped(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    bad = Report("a", 1, ReportKind.LOG, d.job_id, lines='{"not": "a list"}')
    (result,) = apply(engine, bad)
    assert result.target is None and "not a list" in result.reason
    assert sql(engine, "SELECT count(*) FROM task_logs") == [(0,)]


def test_clean_deletes_log_lines_too(engine):
    add(engine, t("a"))
    (d,) = claim(engine)
    apply(engine, log_report(d, "x"))
    with store.writing(engine) as session:
        store.clean(session=session)
    assert sql(engine, "SELECT count(*) FROM task_logs") == [(0,)]
