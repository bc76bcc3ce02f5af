"""Queues, pools and delays through the use cases: what ``show``, ``status`` and the
``pool`` commands answer. Real SQLite files; a private redis-server where Redis matters."""

import pytest
from helpers import query
from rq import Worker
from rq.serializers import JSONSerializer

from bridge import graph, store, usecases
from bridge.settings import Settings

DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def app(db_url: str):
    app = usecases.App(Settings(database_url=db_url, redis_url=DEAD_REDIS), create=True)
    yield app
    app.close()


@pytest.fixture
def live_app(db_url: str, redis_server):
    app = usecases.App(Settings(database_url=db_url, redis_url=redis_server.url), create=True)
    yield app
    app.close()


def add(app, task_id: str, **options) -> None:
    usecases.add(app, [graph.make_spec(task_id=task_id, **options)])


def claim(app) -> list:
    with store.writing(app.engine) as session:
        store.reset_slots(session=session, slots=4)
        return store.claim_ready(session=session, slots=4)


def test_show_says_until_when_a_delayed_task_waits_and_tells_a_retry_backoff_apart(app, db_path):
    # Given a task not before a time, never attempted
    add(app, "later", not_before="2026-11-28T02:00:00Z")
    # Then show says it is delayed until then, in UTC
    assert usecases.show_task(app, "later").why == "delayed until 2026-11-28 02:00:00 UTC"
    # When it had been attempted once (a retry backoff), show says that instead
    query(db_path, "UPDATE tasks SET attempts = 1 WHERE id = 'later'")
    assert usecases.show_task(app, "later").why == ("retry backoff until 2026-11-28 02:00:00 UTC")


def test_show_says_a_pool_is_missing_or_full(app):
    # Given a task of a pool that does not exist
    add(app, "a", pool="gpu")
    assert usecases.show_task(app, "a").why == "pool 'gpu' does not exist: bridge pool set gpu N"
    # When the pool is set to 1 and another task of it takes the slot
    assert usecases.pool_set(app, "gpu", 1).created
    add(app, "b", pool="gpu", priority=5)
    assert [d.task_id for d in claim(app)] == ["b"]
    # Then show says the task waits for a slot of its pool
    assert usecases.show_task(app, "a").why == "waiting for a slot of pool 'gpu' (1 of 1 in flight)"


def test_pool_set_refuses_bad_names_and_slots_and_delete_an_unknown_pool(app):
    with pytest.raises(graph.GraphError, match="pool name 'a b'"):
        usecases.pool_set(app, "a b", 1)
    with pytest.raises(graph.GraphError, match="from 0 to"):
        usecases.pool_set(app, "ok", -1)
    with pytest.raises(store.PoolError, match="no pool named 'nope'"):
        usecases.pool_delete(app, "nope")
    # And set twice changes the slots rather than adding a second pool
    assert usecases.pool_set(app, "ok", 1).created
    assert not usecases.pool_set(app, "ok", 3).created
    assert usecases.pool_list(app).to_list() == [
        {"name": "ok", "slots": 3, "in_flight": 0, "waiting": 0}
    ]


def test_pool_delete_warns_how_many_tasks_now_wait(app):
    usecases.pool_set(app, "api", 2)
    add(app, "a", pool="api")
    deleted = usecases.pool_delete(app, "api")
    assert deleted.waiting == 1
    assert deleted.warnings == [
        "1 task(s) of pool 'api' now wait until it is set again (bridge pool set api N)"
    ]
    # And listing the pools says which pool ready tasks wait for in vain
    listed = usecases.pool_list(app)
    assert listed.pools == []
    assert listed.warnings == [
        "pool 'api' does not exist and 1 ready task(s) wait for it: bridge pool set api N"
    ]


def test_status_and_show_name_a_queue_no_live_worker_serves(live_app):
    # Given a worker on the default queue, and tasks queued on 'gpu' and on the default
    broker = live_app.broker()
    ours = Worker(
        [broker.queue("bridge")], connection=broker.client, name="w1", serializer=JSONSerializer
    )
    ours.register_birth()
    add(live_app, "g1", queue="gpu")
    add(live_app, "g2", queue="gpu")
    add(live_app, "plain")
    claim(live_app)
    # Then status warns about 'gpu' alone, with its task count
    result = usecases.status(live_app)
    assert result.unserved_queues == {"gpu": 2}
    assert result.warnings == [
        "queue 'gpu': 2 task(s) wait and no live worker serves that queue"
        " (start one: bridge worker --queue gpu)"
    ]
    # And show says why a task of it is not picked up, but not of one on a served queue
    assert usecases.show_task(live_app, "g1").why == (
        "queued on 'gpu': no live worker serves that queue"
    )
    assert "no live worker" not in usecases.show_task(live_app, "plain").why
    # When a worker of 'gpu' registers, there is nothing more to say
    gpu = Worker([broker.queue("gpu")], connection=broker.client, name="w2")
    gpu.register_birth()
    assert usecases.status(live_app).unserved_queues == {}
    assert "no live worker" not in usecases.show_task(live_app, "g1").why
