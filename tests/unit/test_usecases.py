"""The use cases every surface calls: results and warnings back, nothing printed.

Real SQLite files; a private redis-server where Redis matters, a closed port
where it must be missing.
"""

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers import query
from rq import Worker
from rq.serializers import JSONSerializer

from bridge import graph, store, usecases
from bridge.messages import Dispatch
from bridge.settings import Settings
from bridge.states import TaskStatus

DEAD_REDIS = "redis://:s3cr3t@127.0.0.1:1/0"


def spec(task_id: str, **options) -> graph.TaskSpec:
    return graph.make_spec(task_id=task_id, **options)


@pytest.fixture
def app(db_url: str):
    """An app whose Redis is missing: the database part of each use case alone."""
    app = usecases.App(Settings(database_url=db_url, redis_url=DEAD_REDIS), create=True)
    yield app
    app.close()


@pytest.fixture
def live_app(db_url: str, redis_server):
    app = usecases.App(Settings(database_url=db_url, redis_url=redis_server.url), create=True)
    yield app
    app.close()


def set_status(db_path: Path | str, task_id: str, status: str, **columns) -> None:
    assignments = ", ".join(["status = ?", *(f"{name} = ?" for name in columns)])
    query(
        db_path, f"UPDATE tasks SET {assignments} WHERE id = ?", status, *columns.values(), task_id
    )


# ---------------------------------------------------------------------- the App


def test_an_app_without_create_refuses_a_missing_database_and_makes_none(tmp_path):
    # Given no database file
    db = tmp_path / "none.db"
    app = usecases.App(Settings(database_url=f"sqlite:///{db}"))
    # When a read use case runs
    with pytest.raises(store.StoreError, match="no database at .*none.db"):
        usecases.list_tasks(app)
    # Then nothing was created
    assert not db.exists()


def test_an_app_with_create_makes_the_database(app, db_path):
    assert usecases.list_tasks(app) == []
    assert db_path.is_file()


# ---------------------------------------------------------------------- add


def test_add_returns_what_it_added_and_prints_nothing(app, capsys):
    result = usecases.add(app, [spec("a"), spec("b", dependencies=["a"])])
    assert result.added == ["a", "b"] and result.skipped == [] and result.warnings == []
    assert [t.id for t in usecases.list_tasks(app)] == ["a", "b"]
    assert capsys.readouterr() == ("", "")


def test_add_skips_same_definitions_when_asked(app):
    usecases.add(app, [spec("a")])
    result = usecases.add(app, [spec("a"), spec("b")], skip_same=True)
    assert result.added == ["b"] and result.skipped == ["a"]


def test_add_warns_about_kinds_no_handler_here_registers(app):
    result = usecases.add(app, [spec("a", kind="no_such_kind"), spec("b", kind="echo")])
    assert result.added == ["a", "b"]
    (warning,) = result.warnings
    assert "no_such_kind" in warning and "echo" not in warning


def test_add_warns_when_a_handler_module_will_not_load(db_url):
    settings = Settings(database_url=db_url, redis_url=DEAD_REDIS, handlers=("no_such_mod_x",))
    app = usecases.App(settings, create=True)
    try:
        result = usecases.add(app, [spec("a")])
    finally:
        app.close()
    assert result.added == ["a"]
    assert any("no_such_mod_x" in w for w in result.warnings)


def test_add_of_a_bad_graph_adds_nothing(app):
    with pytest.raises(graph.GraphError):
        usecases.add(app, [spec("a"), spec("b", dependencies=["zz"])])
    assert usecases.list_tasks(app) == []


# ---------------------------------------------------------------------- retry, cancel, clean


def test_retry_puts_a_failed_task_back(app, db_path):
    usecases.add(app, [spec("a")])
    set_status(db_path, "a", "failed", error="boom")
    result = usecases.retry(app, "a")
    assert result.task_id == "a" and result.warnings == []
    (task,) = usecases.list_tasks(app)
    assert task.status == "available" and task.error is None


def test_retry_of_an_available_task_is_refused(app):
    usecases.add(app, [spec("a")])
    with pytest.raises(store.TaskStateError, match="cannot retry"):
        usecases.retry(app, "a")


def test_cancel_of_a_task_without_a_job_needs_no_redis(app):
    usecases.add(app, [spec("a")])
    result = usecases.cancel(app, "a")
    assert result.previous is TaskStatus.AVAILABLE
    assert result.job is None and result.warnings == []
    assert usecases.list_tasks(app)[0].status == "cancelled"


def test_cancel_of_a_queued_task_withdraws_its_job(live_app, db_path):
    # Given a task queued with its job waiting in the RQ queue
    usecases.add(live_app, [spec("a")])
    set_status(db_path, "a", "queued", attempts=1, job_id="job-a-1")
    broker = live_app.broker()
    broker.enqueue([Dispatch("a", 1, "job-a-1", "noop", None, None, namespace=live_app.namespace)])
    assert broker.queued_jobs("bridge") == 1
    # When it is cancelled
    result = usecases.cancel(live_app, "a")
    # Then the job is gone from the queue and the result says so
    assert result.previous is TaskStatus.QUEUED
    assert result.job is not None and "removed from the queue" in result.job
    assert result.stopped and result.warnings == []
    assert broker.queued_jobs("bridge") == 0


def test_cancel_without_redis_cancels_and_warns_without_the_password(app, db_path):
    usecases.add(app, [spec("a")])
    set_status(db_path, "a", "working", attempts=1, job_id="job-a-1")
    result = usecases.cancel(app, "a")
    assert usecases.list_tasks(app)[0].status == "cancelled"
    (warning,) = result.warnings
    assert "127.0.0.1:1" in warning and "ignored" in warning
    assert "s3cr3t" not in warning


def test_clean_deletes_every_task_and_fences_off_what_was_in_flight(live_app, db_path):
    usecases.add(live_app, [spec("a"), spec("b")])
    set_status(db_path, "a", "queued", attempts=1, job_id="job-a-1")
    live_app.broker().enqueue(
        [Dispatch("a", 1, "job-a-1", "noop", None, None, namespace=live_app.namespace)]
    )
    result = usecases.clean(live_app)
    assert result.deleted == 2 and result.warnings == []
    assert usecases.list_tasks(live_app) == []
    assert live_app.broker().queued_jobs("bridge") == 0


def test_clean_without_redis_still_deletes_and_warns(app, db_path):
    usecases.add(app, [spec("a")])
    set_status(db_path, "a", "working", attempts=1, job_id="job-a-1")
    result = usecases.clean(app)
    assert result.deleted == 1
    (warning,) = result.warnings
    assert "s3cr3t" not in warning and "127.0.0.1:1" in warning


# ---------------------------------------------------------------------- reading


def test_show_explains_and_carries_the_latest_failure(app, db_path):
    usecases.add(app, [spec("a"), spec("b", dependencies=["a"])])
    set_status(db_path, "a", "failed", attempts=2)
    for attempt, text in ((1, "first"), (2, "second")):
        query(
            db_path,
            "INSERT INTO task_events (task_id, from_status, to_status, attempt, at, detail)"
            " VALUES ('a', 'working', ?, ?, '2026-01-01', ?)",
            "available" if attempt == 1 else "failed",
            attempt,
            f"failed: E: {text}\nTraceback (most recent call last):\n  x\nE: {text}",
        )
    view = usecases.show_task(app, "a")
    assert view.traceback is not None and view.traceback.startswith("failed: E: second")
    blocked = usecases.show_task(app, "b")
    assert blocked.why.startswith("blocked: dependency a failed")
    assert blocked.traceback is None
    assert blocked.to_dict()["why"] == blocked.why


def test_events_after_an_id_give_only_newer_ones(app):
    usecases.add(app, [spec("a")])
    (first,) = usecases.list_events(app)
    usecases.add(app, [spec("b")])
    newer = usecases.list_events(app, after=first.id)
    assert [e.task_id for e in newer] == ["b"]
    assert usecases.list_events(app, "a", after=first.id) == []
    with pytest.raises(store.TaskStateError, match="no task 'zz'"):
        usecases.list_events(app, "zz")


def test_progress_when_stuck_names_what_stops_the_graph(app, db_path):
    usecases.add(app, [spec("a"), spec("b", dependencies=["a"]), spec("c", dependencies=["a"])])
    set_status(db_path, "a", "failed", error="E: bad\nmore")
    state = usecases.progress(app)
    assert state.stuck and not state.finished and state.total == 3
    assert state.problems == [usecases.Problem("a", "failed", "E: bad")]
    assert state.blocked == 2


def test_progress_when_finished(app, db_path):
    usecases.add(app, [spec("a")])
    set_status(db_path, "a", "done")
    state = usecases.progress(app)
    assert state.finished and not state.stuck and state.problems == []


# ---------------------------------------------------------------------- leases and status


def take(app: usecases.App, name: str, holder: str, clock: float, ttl: float = 15.0) -> bool:
    with store.writing(app.engine) as session:
        return store.acquire_lease(session=session, name=name, holder=holder, ttl=ttl, clock=clock)


@pytest.mark.both_backends
def test_a_lease_remembers_when_its_holder_took_it(app):
    assert take(app, "dispatcher:q", "one", clock=1000.0)
    assert take(app, "dispatcher:q", "one", clock=1005.0)  # renewal
    assert not take(app, "dispatcher:q", "two", clock=1010.0)  # still held
    with store.reading(app.engine) as session:
        (lease,) = store.list_leases(session=session, prefix="dispatcher")
    assert (lease.holder, lease.acquired_at, lease.expires_at) == ("one", 1000.0, 1020.0)
    assert take(app, "dispatcher:q", "two", clock=1030.0)  # lapsed: taken over
    with store.reading(app.engine) as session:
        (lease,) = store.list_leases(session=session, prefix="dispatcher")
    assert (lease.holder, lease.acquired_at) == ("two", 1030.0)


@pytest.mark.both_backends
def test_status_without_redis_shows_the_database_part_and_warns(app, db_url):
    # Given tasks in several states, a live dispatcher lease and an unrelated lease
    usecases.add(app, [spec("a"), spec("b"), spec("c")])
    set_status(db_url, "a", "done")
    set_status(db_url, "b", "working", attempts=1)
    now = time.time()
    take(app, "dispatcher:bridge", "host:1:abc", clock=now - 60)
    take(app, "dispatcher:bridge", "host:1:abc", clock=now - 5)
    take(app, "other", "x", clock=now)
    # When status is asked for
    result = usecases.status(app, clock=now)
    # Then the lease, since when, counts and in-flight tasks come from the database
    (lease,) = result.dispatchers
    assert lease.holder == "host:1:abc" and lease.live and result.dispatching
    assert lease.since == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - 60))
    assert lease.expires_in == pytest.approx(10.0, abs=0.2)
    assert result.counts == {"available": 1, "done": 1, "working": 1} and result.total == 3
    assert result.in_flight == 1
    # And Redis's part is unknown, with a warning that hides the password
    assert result.workers is None and result.queue_depth is None
    (warning,) = result.warnings
    assert "s3cr3t" not in warning and "s3cr3t" not in str(result.to_dict())
    assert result.redis == "redis://:***@127.0.0.1:1/0"


@pytest.mark.both_backends
def test_status_reads_the_lease_clock_a_dispatcher_took_it_by(app):
    # Given a lease taken as a dispatcher takes it (by the database's clock on PostgreSQL,
    # the host's on SQLite)
    with store.writing(app.engine) as session:
        store.acquire_lease(session=session, name="dispatcher", holder="h:1:x", ttl=15.0)
        taken = store.lease_clock(session=session)
    # When status is asked for on that clock
    (lease,) = usecases.status(app).dispatchers
    # Then it is live with about 15 s left, taken about now
    assert lease.live and 10.0 < lease.expires_in <= 15.0, lease
    since = datetime.strptime(lease.since, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    assert abs(since.timestamp() - taken) <= 1.5, (lease, taken)


@pytest.mark.both_backends
def test_status_of_a_lapsed_lease_says_no_dispatcher(app):
    take(app, "dispatcher:bridge", "gone", clock=time.time() - 100)
    result = usecases.status(app)
    assert not result.dispatching
    assert result.dispatchers[0].expires_in < 0
    assert result.to_dict()["dispatchers"][0]["live"] is False


def test_status_lists_the_rq_workers_on_the_queue_and_its_depth(live_app):
    # Given one RQ worker registered on the queue, one on another queue, and a waiting job
    broker = live_app.broker()
    ours = Worker(
        [broker.queue("bridge")], connection=broker.client, name="w-ours", serializer=JSONSerializer
    )
    ours.register_birth()
    other_queue = broker.queue("other")
    theirs = Worker([other_queue], connection=broker.client, name="w-theirs")
    theirs.register_birth()
    ours.set_state("busy")
    broker.enqueue([Dispatch("a", 1, "job-a-1", "noop", None, None, namespace=live_app.namespace)])
    # When status is asked for
    result = usecases.status(live_app)
    # Then only our worker shows, with its state, and the queue holds one job
    assert [w.name for w in result.workers or []] == ["w-ours"]
    assert result.workers[0].state == "busy"
    assert result.queue_depth == 1 and result.warnings == []
    assert result.to_dict()["workers"][0]["name"] == "w-ours"


def test_an_older_database_gets_the_lease_column_on_open(db_url, db_path):
    # Given a database made before leases recorded when they were taken (and before
    # schema revisions: no version table)
    store.open_engine(db_url).dispose()
    query(db_path, "ALTER TABLE leases DROP COLUMN acquired_at")
    query(db_path, "DROP TABLE alembic_version")
    # When it is opened again
    app = usecases.App(Settings(database_url=db_url, redis_url=DEAD_REDIS))
    try:
        # Then the column is back and leases work
        assert take(app, "dispatcher", "one", clock=5.0)
        with store.reading(app.engine) as session:
            (lease,) = store.list_leases(session=session, prefix="dispatcher")
        assert lease.acquired_at == 5.0
    finally:
        app.close()
