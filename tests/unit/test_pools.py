"""Pool accounting in the claim: a pool's tasks never exceed its slots in flight, on top
of the global slots; priorities order within a pool; a full pool holds back only its own
tasks; a task naming a pool that does not exist waits. On SQLite and PostgreSQL."""

import pytest
from sqlalchemy import text

from bridge import store
from bridge.graph import make_spec
from bridge.messages import Report
from bridge.states import ReportKind
from bridge.store import pools

pytestmark = pytest.mark.both_backends

SLOTS = 8


@pytest.fixture
def engine(db_url):
    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        store.reset_slots(session=session, slots=SLOTS)
    yield engine
    engine.dispose()


def add(engine, *specs) -> None:
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=list(specs))


def task(task_id: str, **fields) -> object:
    return make_spec(task_id=task_id, **fields)


def set_pool(engine, name: str, slots: int) -> None:
    with store.writing(engine) as session:
        store.set_pool(session=session, name=name, slots=slots)


def claim(engine, slots: int = SLOTS) -> list:
    with store.writing(engine) as session:
        return store.claim_ready(session=session, slots=slots)


def ids(dispatches) -> list[str]:
    return [d.task_id for d in dispatches]


def finish(engine, *dispatches) -> None:
    with store.writing(engine) as session:
        store.apply_reports(
            session=session,
            reports=[
                Report(d.task_id, d.attempt, ReportKind.SUCCEEDED, d.job_id, worker="w", output="1")
                for d in dispatches
            ],
        )


def in_flight(engine, pool: str) -> int:
    with store.reading(engine) as session:
        return session.execute(
            text("SELECT count(*) FROM tasks WHERE status IN ('queued', 'working') AND pool = :p"),
            {"p": pool},
        ).scalar()


def test_a_pool_never_has_more_tasks_in_flight_than_its_slots(engine):
    # Given a pool of 2 and 6 of its tasks ready, with 8 global slots free
    set_pool(engine, "api", 2)
    add(engine, *[task(f"t{i}", pool="api") for i in range(6)])
    # When the dispatcher claims
    first = claim(engine)
    # Then only 2 are dispatched, and claiming again adds none while they run
    assert ids(first) == ["t0", "t1"]
    assert claim(engine) == []
    assert in_flight(engine, "api") == 2
    # When one finishes, exactly one more is dispatched
    finish(engine, first[0])
    assert ids(claim(engine)) == ["t2"]
    assert in_flight(engine, "api") == 2


def test_the_global_slots_still_bound_a_pool_with_more_slots(engine):
    # Given a pool larger than the global slots
    set_pool(engine, "big", 100)
    add(engine, *[task(f"t{i}", pool="big") for i in range(12)])
    # Then no more than the global slots are claimed
    assert len(claim(engine)) == SLOTS


def test_priorities_order_the_tasks_within_a_pool(engine):
    # Given a pool of 2 and tasks of it with different priorities, added low first
    set_pool(engine, "gpu", 2)
    add(
        engine,
        task("low", pool="gpu", priority=0),
        task("mid", pool="gpu", priority=5),
        task("high", pool="gpu", priority=9),
    )
    # Then the two highest are dispatched first
    assert ids(claim(engine)) == ["high", "mid"]


def test_a_full_pool_does_not_starve_the_other_ready_tasks(engine):
    # Given a full-to-be pool whose many tasks come first by priority, then plain tasks
    set_pool(engine, "one", 1)
    add(engine, *[task(f"p{i}", pool="one", priority=10) for i in range(20)])
    add(engine, *[task(f"plain{i}") for i in range(5)], task("other", pool="two"))
    set_pool(engine, "two", 3)
    # When the dispatcher claims with 8 slots
    claimed = ids(claim(engine))
    # Then the pool gets its one slot and the rest go to the tasks behind it
    assert claimed == ["p0", "plain0", "plain1", "plain2", "plain3", "plain4", "other"]
    # And while the pool is full, a later claim still takes new plain tasks
    add(engine, task("late"))
    assert ids(claim(engine)) == ["late"]


def test_a_task_naming_a_pool_that_does_not_exist_waits_until_it_is_set(engine):
    # Given a task of an unknown pool and a plain task
    add(engine, task("orphan", pool="nowhere"), task("plain"))
    # Then only the plain task is dispatched
    assert ids(claim(engine)) == ["plain"]
    assert claim(engine) == []
    # When the pool is created, the task is dispatched
    set_pool(engine, "nowhere", 1)
    assert ids(claim(engine)) == ["orphan"]


def test_a_pool_of_zero_slots_holds_its_tasks_back(engine):
    set_pool(engine, "paused", 0)
    add(engine, task("held", pool="paused"))
    assert claim(engine) == []
    set_pool(engine, "paused", 1)
    assert ids(claim(engine)) == ["held"]


def test_lowering_a_pool_lets_the_tasks_in_flight_finish_first(engine):
    # Given 3 tasks of a pool of 3 in flight, and 2 more waiting
    set_pool(engine, "api", 3)
    add(engine, *[task(f"t{i}", pool="api") for i in range(5)])
    running = claim(engine)
    assert len(running) == 3
    # When the pool is lowered to 1 and two of them finish
    set_pool(engine, "api", 1)
    finish(engine, *running[:2])
    # Then nothing new is claimed while 1 is still in flight
    assert claim(engine) == []
    # And once the last finishes, one more is
    finish(engine, running[2])
    assert ids(claim(engine)) == ["t3"]


def test_pool_list_counts_in_flight_and_waiting_and_delete_refuses_a_busy_pool(engine):
    # Given a pool of 1 with one task in flight and two ready ones waiting
    set_pool(engine, "api", 1)
    add(engine, *[task(f"t{i}", pool="api") for i in range(3)])
    (running,) = claim(engine)
    with store.reading(engine) as session:
        (info,) = store.list_pools(session=session)
    assert (info.name, info.slots, info.in_flight, info.waiting) == ("api", 1, 1, 2)
    # Then deleting it is refused while its task is in flight, and the pool stays
    with pytest.raises(store.PoolError, match="in flight"), store.writing(engine) as session:
        store.delete_pool(session=session, name="api")
    with store.reading(engine) as session:
        assert store.pool_info(session=session, name="api") is not None
    # When that task finishes, deleting it works and says how many tasks now wait
    finish(engine, running)
    with store.writing(engine) as session:
        assert store.delete_pool(session=session, name="api") == 2
    # And those tasks are no longer claimed
    assert claim(engine) == []


def test_within_pools_takes_rows_in_order_while_their_pool_has_room():
    class Row:
        def __init__(self, pool):
            self.pool = pool

    rows = [Row("a"), Row("a"), Row(None), Row("b"), Row("a")]
    free = {"a": 1, "b": 1}
    taken, passed = pools.within_pools(rows, free, limit=10)
    assert [r.pool for r in taken] == ["a", None, "b"]
    assert passed and free == {"a": 0, "b": 0}
