"""The dispatcher's loop against a real SQLite file and the in-memory broker."""

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from memory_broker import MemoryBroker
from sqlalchemy import event, text

from bridge import dispatcher as dispatcher_module
from bridge import store
from bridge.dispatcher import Dispatcher
from bridge.graph import make_spec
from bridge.settings import Settings


@pytest.fixture
def setup(tmp_path: Path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'd.db'}", slots=2)
    engine = store.open_engine(settings.database_url)
    with store.reading(engine) as session:
        broker = MemoryBroker(namespace=store.namespace(session=session))
    yield settings, engine, broker, Dispatcher(settings, engine, broker)
    engine.dispose()


def add(engine, *specs) -> None:
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=list(specs))


def task(engine, task_id: str):
    with store.reading(engine) as session:
        return store.require_task(session=session, task_id=task_id)


def details(engine, task_id: str) -> list[str]:
    with store.reading(engine) as session:
        return [e.detail or "" for e in store.list_events(session=session, task_id=task_id)]


def test_a_tick_claims_ready_tasks_into_free_slots_and_enqueues_them(setup):
    settings, engine, broker, d = setup
    add(engine, *(make_spec(task_id=f"t{n}") for n in range(3)))
    d.start()
    stats = d.tick(block=False)
    assert stats.dispatched == 2  # two slots
    assert len(broker.queues["bridge"]) == 2
    assert {task(engine, f"t{n}").status for n in range(2)} == {"queued"}


def test_a_finished_job_whose_report_is_still_in_redis_is_never_judged_lost(setup):
    # Given a job that ran and finished while the dispatcher was not looking (paused)
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"))
    d.start()
    d.tick(block=False)
    job = broker.take()
    broker.finish(job)
    # When the dispatcher judges what is in flight, before it ticked again
    recovered = d.reconcile(grace=0.0)
    # Then the pending reports were applied first: the task is done, nothing was recovered
    assert recovered == 0
    assert task(engine, "a").status == "done"
    assert not any("WorkerLost" in x for x in details(engine, "a"))


def test_a_finished_job_without_a_report_is_left_alone_until_the_report_grace(setup, monkeypatch):
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"))
    d.start()
    d.tick(block=False)
    job = broker.take()
    d.tick(block=False)  # the start report
    broker.finish(job, report=False)
    assert d.reconcile(grace=0.0) == 0
    assert task(engine, "a").status == "working"
    # Past the grace, the report is presumed lost and the task is sent again, not failed
    monkeypatch.setattr(dispatcher_module, "REPORT_GRACE", -1.0)
    assert d.reconcile(grace=0.0) == 1
    assert (task(engine, "a").status, task(engine, "a").attempts) == ("queued", 2)


def test_a_lost_job_is_fenced_off_before_its_successor_is_enqueued(setup, caplog):
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"))
    d.start()
    d.tick(block=False)
    old = task(engine, "a").job_id
    broker.jobs.clear()
    broker.queues["bridge"].clear()  # Redis lost it
    with caplog.at_level("INFO", logger="bridge.dispatcher"):
        assert d.reconcile(grace=0.0) == 1
    new = task(engine, "a").job_id
    assert new != old
    assert broker.calls.index(f"supersede {old}") < broker.calls.index(f"enqueue {new}")
    # And the log names the task and its recovery
    assert f"task 'a' sent again as attempt 2: {new}" in caplog.text


def test_after_a_redis_restart_a_running_job_gets_one_beat_to_show_its_heartbeat(
    setup, monkeypatch
):
    # Given two jobs running, whose heartbeat keys a Redis restart lost
    settings, engine, broker, d = setup
    monkeypatch.setattr(dispatcher_module, "HEARTBEAT_RETURN", 0.3)
    add(engine, make_spec(task_id="alive"), make_spec(task_id="dead"))
    d.start()
    d.tick(block=False)
    alive, _ = broker.take(), broker.take()
    d.tick(block=False)  # their start reports: both working
    monkeypatch.setattr(d, "_next_check", 0.0)
    broker.alive.clear()
    broker.redis_run = "run-2"
    # When the dispatcher sees the restart, nothing running is judged yet
    d._maintain(dispatcher_module.TickStats())
    assert {task(engine, t).status for t in ("alive", "dead")} == {"working"}
    # And when one worker's heartbeat is back after its next beat and the other's is not
    broker.alive.add(alive.job_id)
    threading.Event().wait(0.4)
    assert d.reconcile(grace=0.0) == 1
    # Then only the silent one is failed as lost; the live one runs on
    assert task(engine, "alive").status == "working"
    assert task(engine, "dead").status == "failed"
    assert "stopped sending heartbeats" in (task(engine, "dead").error or "")


def test_an_attempt_whose_worker_is_alive_again_is_not_replaced(setup):
    # Given a job picked and started, whose job record says queued (as when a worker
    # that took it was paused) but whose heartbeat comes back before the fence is set
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"))
    d.start()
    d.tick(block=False)
    job_id = task(engine, "a").job_id
    broker.queues["bridge"].clear()  # "left the queue without running" ...
    real_supersede = broker.supersede

    def supersede_while_it_starts(jobs, *, withdraw=True, force=False):
        broker.alive.add(job_id)  # ... but the worker starts it right now
        return real_supersede(jobs, withdraw=withdraw, force=force)

    broker.supersede = supersede_while_it_starts
    assert d.reconcile(grace=0.0) == 0
    assert (task(engine, "a").status, task(engine, "a").job_id) == ("queued", job_id)


def test_a_backoff_that_ends_while_every_slot_is_busy_claims_once_not_every_tick(
    setup, monkeypatch
):
    # Given both slots busy and a failed task whose retry backoff has just ended
    settings, engine, broker, d = setup
    add(engine, *(make_spec(task_id=f"busy{n}") for n in range(2)))
    add(engine, make_spec(task_id="retry", max_attempts=3))
    d.start()
    d.tick(block=False)
    past = (datetime.now(timezone.utc) - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with store.writing(engine) as session:
        session.execute(
            text("UPDATE tasks SET failures = 1, not_before = :t WHERE id = 'retry'"), {"t": past}
        )
    claims = []
    real = store.claim_ready

    def counting(**kwargs):
        claims.append(1)
        return real(**kwargs)

    monkeypatch.setattr(store, "claim_ready", counting)
    d._wakeup_stale = True
    # When the dispatcher ticks many times with nothing else happening
    for _ in range(50):
        d.tick(block=False)
    # Then it claimed once for the ended backoff, not on every tick
    assert len(claims) <= 2, len(claims)


def test_a_database_error_is_retried_and_no_report_is_lost(setup, monkeypatch):
    # Given a dispatcher running, and a database that fails one commit
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"))
    monkeypatch.setattr(dispatcher_module, "DATABASE_RETRY", 0.05)
    real = store.apply_reports
    failures = []

    def flaky(**kwargs):
        if not failures:
            failures.append(1)
            raise store.StoreError("database error: database is locked")
        return real(**kwargs)

    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        deadline = datetime.now() + timedelta(seconds=10)
        while not broker.queues.get("bridge") and datetime.now() < deadline:
            threading.Event().wait(0.02)
        monkeypatch.setattr(store, "apply_reports", flaky)
        broker.finish(broker.take())
        while task(engine, "a").status != "done" and datetime.now() < deadline:
            threading.Event().wait(0.05)
        # Then the dispatcher is still running and the report applied after the error
        assert failures and runner.is_alive()
        assert task(engine, "a").status == "done"
    finally:
        d.stop_event.set()
        runner.join(timeout=10)


def test_a_read_only_database_is_waited_out_and_dispatching_goes_on(setup, monkeypatch, caplog):
    # Given a dispatcher running, whose database then refuses every write (SQLite's
    # query_only: what a read-only file does, also to root), and a task added meanwhile
    settings, engine, broker, d = setup
    monkeypatch.setattr(dispatcher_module, "DATABASE_RETRY", 0.05)
    read_only = threading.Event()

    @event.listens_for(engine, "connect")
    def _refuse_writes(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA query_only = {int(read_only.is_set())}")

    runner = threading.Thread(target=d.run)
    with caplog.at_level("WARNING", logger="bridge.dispatcher"):
        runner.start()
        try:
            deadline = datetime.now() + timedelta(seconds=10)
            while d._run_id is None and datetime.now() < deadline:
                threading.Event().wait(0.02)
            read_only.set()
            engine.dispose()  # connections made from now on refuse writes
            add_engine = store.open_engine(settings.database_url)
            try:
                with store.writing(add_engine) as session:
                    store.add_tasks(session=session, specs=[make_spec(task_id="a")])
            finally:
                add_engine.dispose()
            while "readonly" not in caplog.text and datetime.now() < deadline:
                threading.Event().wait(0.02)
            # Then it logs the failure, keeps running, and sends nothing meanwhile
            assert "the database failed" in caplog.text and "readonly" in caplog.text
            threading.Event().wait(0.3)
            assert runner.is_alive() and not broker.queues.get("bridge")
            # When the database takes writes again, the task is dispatched
            read_only.clear()
            engine.dispose()
            while not broker.queues.get("bridge") and datetime.now() < deadline:
                threading.Event().wait(0.02)
            assert broker.queues.get("bridge") and task(engine, "a").status == "queued"
        finally:
            d.stop_event.set()
            runner.join(timeout=10)
    assert not runner.is_alive()


def test_a_drain_applies_what_was_waiting_and_leaves_what_keeps_arriving(setup):
    # Given two jobs running and the start report of each waiting in the stream
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"), make_spec(task_id="b"))
    d.start()
    d.tick(block=False)
    first, second = broker.take(), broker.take()
    # And workers that keep reporting while the dispatcher reads (a busy stream)
    read = broker.read_reports
    finishing = [first, second]

    def busy_read(consumer, *, block_ms, count=1000):
        taken = read(consumer, block_ms=block_ms, count=count)
        if finishing:
            broker.finish(finishing.pop(0))
        return taken

    broker.read_reports = busy_read
    # When the dispatcher drains the stream
    d.drain()
    # Then what was waiting when it began is applied, and it did not wait for the rest
    assert task(engine, "a").status == "working"
    assert task(engine, "b").status == "working"
    assert [r.kind.value for _, r in broker.stream] == ["succeeded"]
    # And what arrived meanwhile is applied by the next tick
    broker.read_reports = read
    d.tick(block=False)
    assert {task(engine, "a").status, task(engine, "b").status} == {"done", "working"}


def test_a_claim_owed_after_a_drain_does_not_wait_for_another_report(setup):
    # Given a chain whose first link finished and was applied by a drain (which never claims)
    settings, engine, broker, d = setup
    add(engine, make_spec(task_id="a"), make_spec(task_id="b", dependencies=["a"]))
    d.start()
    d.tick(block=False)
    broker.finish(broker.take())
    d.drain()
    assert task(engine, "a").status == "done"
    assert task(engine, "b").status == "available"
    # When the dispatcher ticks as its loop does (blocking)
    broker.blocks.clear()
    d.tick(block=True)
    # Then it looked without waiting (no report will come before this claim) and claimed b
    assert broker.blocks[0] == 0
    assert task(engine, "b").status == "queued"


def test_progress_reports_are_applied_without_a_claim_and_do_not_end_a_drain_early(setup):
    from bridge.messages import Report
    from bridge.states import ReportKind

    # Given a running task and a ready one waiting for a slot (slots: 2, both busy)
    settings, engine, broker, d = setup
    add(engine, *(make_spec(task_id=f"t{n}") for n in range(3)))
    d.start()
    d.tick(block=False)
    job = broker.take()
    d.tick(block=False)  # the start report
    # When only a progress report arrives
    broker._publish(
        Report(job.task_id, job.attempt, ReportKind.PROGRESS, job.job_id, "w1", progress=0.5)
    )
    d._claim_wanted = False  # nothing owed from before
    stats = d.tick(block=False)
    # Then it is noted (not counted as applied or ignored), the task keeps its state, and
    # no claim was made for it
    assert (stats.noted, stats.applied, stats.ignored, stats.dispatched) == (1, 0, 0, 0)
    assert task(engine, job.task_id).progress == 0.5
    assert task(engine, job.task_id).status == "working"
    assert not d._claim_wanted
    # And a drain reads past a batch of notes to the outcome behind them
    broker._publish(
        Report(job.task_id, job.attempt, ReportKind.PROGRESS, job.job_id, "w1", progress=0.9)
    )
    broker.finish(job)
    read = broker.read_reports
    broker.read_reports = lambda consumer, *, block_ms, count=1: read(  # one at a time
        consumer, block_ms=block_ms, count=1
    )
    d.drain()
    assert task(engine, job.task_id).status == "done"
