"""The dispatcher and RQ's in-process worker against a real redis-server."""

import json
from pathlib import Path

import pytest

from bridge import store
from bridge.broker import Broker, connect
from bridge.broker.working import BridgeSimpleWorker, publish
from bridge.dispatcher import Dispatcher
from bridge.graph import make_spec
from bridge.redis_server import PrivateRedis
from bridge.settings import Settings


@pytest.fixture
def setup(tmp_path: Path, redis_server: PrivateRedis):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'it.db'}", redis_url=redis_server.url, slots=3
    )
    engine = store.open_engine(settings.database_url)
    client = connect(settings.redis_url)
    with store.reading(engine) as session:
        broker = Broker(client, store.namespace(session=session))
    dispatcher = Dispatcher(settings, engine, broker)
    worker = BridgeSimpleWorker([settings.queue], connection=client)
    return settings, engine, broker, dispatcher, worker


def add(engine, *specs) -> None:
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=list(specs))


def run_to_end(
    dispatcher: Dispatcher, worker: BridgeSimpleWorker, engine, rounds: int = 50
) -> None:
    dispatcher.start()
    for _ in range(rounds):
        dispatcher.tick(block=False)
        worker.work(burst=True)
        dispatcher.tick(block=False)
        with store.reading(engine) as session:
            state = store.progress(session=session)
        if state.finished or state.stuck:
            return
    raise AssertionError("graph did not finish")


def tasks(engine) -> dict:
    with store.reading(engine) as session:
        return {t.id: t for t in store.list_tasks(session=session)}


def test_graph_runs_to_done_and_outputs_are_stored(setup):
    # Given a diamond a -> (b, c) -> d
    settings, engine, broker, dispatcher, worker = setup
    add(
        engine,
        make_spec(task_id="a", kind="echo", payload={"n": 1}),
        make_spec(task_id="b", kind="echo", payload={"n": 2}, dependencies=["a"]),
        make_spec(task_id="c", kind="echo", payload=[3], dependencies=["a"]),
        make_spec(task_id="d", kind="noop", dependencies=["b", "c"]),
    )
    # When the dispatcher and a worker run
    run_to_end(dispatcher, worker, engine)
    # Then every task is done with its output, and each ran once
    result = tasks(engine)
    assert {t.status for t in result.values()} == {"done"}
    assert json.loads(result["a"].output) == {"n": 1}
    assert json.loads(result["c"].output) == [3]
    assert json.loads(result["d"].output) is None
    assert all(t.attempts == 1 for t in result.values())
    with store.reading(engine) as session:
        events = store.list_events(session=session, task_id="d")
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, "available"),
        ("available", "queued"),
        ("queued", "working"),
        ("working", "done"),
    ]


def test_failure_is_recorded_with_its_traceback_and_blocks_dependents(setup):
    settings, engine, broker, dispatcher, worker = setup
    add(
        engine,
        make_spec(task_id="bad", kind="fail", payload={"message": "disk full"}),
        make_spec(task_id="after", dependencies=["bad"]),
    )
    run_to_end(dispatcher, worker, engine)
    result = tasks(engine)
    assert result["bad"].status == "failed"
    assert result["bad"].error == "TaskFailed: disk full"
    assert result["after"].status == "available"
    with store.reading(engine) as session:
        failed = [
            e for e in store.list_events(session=session, task_id="bad") if e.to_status == "failed"
        ]
    assert "Traceback" in failed[0].detail


def test_unknown_kind_fails_with_a_clear_error(setup):
    settings, engine, broker, dispatcher, worker = setup
    add(engine, make_spec(task_id="x", kind="no-such-handler"))
    run_to_end(dispatcher, worker, engine)
    error = tasks(engine)["x"].error
    assert error.startswith("HandlerError: no handler registered for kind 'no-such-handler'")


def test_slots_bound_the_jobs_in_redis(setup):
    # Given 10 ready tasks and 3 slots
    settings, engine, broker, dispatcher, worker = setup
    add(engine, *[make_spec(task_id=f"t{i}") for i in range(10)])
    dispatcher.start()
    # When the dispatcher ticks without any worker running
    dispatcher.tick(block=False)
    dispatcher.tick(block=False)
    # Then only 3 jobs are in Redis and 3 slots are active
    assert broker.queue(settings.queue).count == 3
    with store.reading(engine) as session:
        active = [s for s in store.list_slots(session=session) if s.active]
        queued = store.list_tasks(session=session, status=store.TaskStatus.QUEUED)
    assert len(active) == 3
    assert {s.task_id for s in active} == {t.id for t in queued}


def test_stale_report_from_an_old_attempt_changes_nothing(setup):
    # Given a task dispatched as attempt 1, whose job Redis then loses
    settings, engine, broker, dispatcher, worker = setup
    add(engine, make_spec(task_id="t", kind="echo", payload="v"))
    dispatcher.start()
    dispatcher.tick(block=False)
    broker.client.flushall()
    # When reconciliation sends it again (attempt 2) and the old attempt reports late
    assert dispatcher.reconcile(grace=0.0) == 1
    from bridge.messages import Report
    from bridge.states import ReportKind

    publish(
        broker.client,
        broker.namespace,
        Report("t", 1, ReportKind.SUCCEEDED, "ghost", output='"old"'),
    )
    dispatcher.tick(block=False)
    # Then the late report is ignored and recorded as such
    task = tasks(engine)["t"]
    assert task.status == "queued" and task.attempts == 2
    with store.reading(engine) as session:
        ignored = [
            e
            for e in store.list_events(session=session, task_id="t")
            if e.detail.startswith("ignored")
        ]
    assert len(ignored) == 1 and "stale" in ignored[0].detail
    # And the new attempt completes normally
    worker.work(burst=True)
    dispatcher.tick(block=False)
    assert tasks(engine)["t"].status == "done"
    assert json.loads(tasks(engine)["t"].output) == "v"
