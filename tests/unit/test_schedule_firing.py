"""A schedule's occurrence becomes a run exactly once: the store's guarded firing on both
backends, and the dispatcher that fires it (real database, in-memory broker)."""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from memory_broker import MemoryBroker

from bridge import store, usecases
from bridge.app import App
from bridge.dispatcher import Dispatcher
from bridge.schedules import ScheduleError, parse_stamp, plan, run_name
from bridge.settings import Settings

pytestmark = pytest.mark.both_backends

UTC = timezone.utc
GRAPH = (
    '[{"id": "fetch", "kind": "noop"}, {"id": "parse", "kind": "noop", "dependencies": ["fetch"]}]'
)
NO_REDIS = "redis://127.0.0.1:1/0"
"""Nothing listens there: the use cases' wake-up nudge goes nowhere (never the shared Redis)."""


@pytest.fixture
def app(db_url):
    settings = Settings(database_url=db_url, redis_url=NO_REDIS, slots=4)
    engine = store.open_engine(db_url)
    with store.writing(engine) as session:
        store.reset_slots(session=session, slots=settings.slots)
    yield App(settings, engine=engine)
    engine.dispose()


def due_schedule(app: App, name: str = "every", *, minutes_ago: float = 1.5, **options):
    """An every-minute schedule added ``minutes_ago``: due now (and since then)."""
    added = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    usecases.schedule_add(app, name, "* * * * *", GRAPH, clock=added, **options)
    with store.reading(app.engine) as session:
        return store.get_schedule(session=session, name=name)


def fire(app: App, row, now: datetime | None = None) -> store.Fired:
    firing = plan(
        row.cron,
        row.timezone,
        due=parse_stamp(row.next_due),
        now=now or datetime.now(UTC),
        catch_up=bool(row.catch_up),
    )
    assert firing is not None
    with store.writing(app.engine) as session:
        return store.fire_schedule(
            session=session, schedule=row, firing=firing, queue="bridge", max_payload=1 << 20
        )


def runs_of(app: App, schedule: str) -> list[tuple[str, str]]:
    with store.reading(app.engine) as session:
        rows = session.execute(
            store.RUNS.select().where(store.RUNS.c.schedule == schedule).order_by("name")
        )
        return [(r.name, r.due_at) for r in rows]


def test_firing_creates_the_latest_run_with_its_scoped_tasks_and_advances_the_schedule(app):
    # Given an every-minute schedule whose first due time passed
    row = due_schedule(app)
    now = datetime.now(UTC)
    # When it fires (latest only)
    fired = fire(app, row, now)
    # Then one run, named after the latest due time, holds the graph's tasks scoped to it
    latest = now.replace(second=0, microsecond=0)
    name = run_name("every", latest)
    assert fired.created == [name] and fired.advanced
    with store.reading(app.engine) as session:
        tasks = {t.id: t for t in store.list_tasks(session=session)}
        after = store.get_schedule(session=session, name="every")
    assert set(tasks) == {f"{name}/fetch", f"{name}/parse"}
    assert tasks[f"{name}/parse"].local_id == "parse"
    assert tasks[f"{name}/parse"].run == name
    assert tasks[f"{name}/fetch"].queue == "bridge"
    # And the schedule moved on to the next minute
    assert parse_stamp(after.last_due) == latest
    assert parse_stamp(after.next_due) == latest + timedelta(minutes=1)


def test_firing_again_from_the_same_plan_changes_nothing(app):
    # Given a firing committed (then the dispatcher died before it knew, say)
    row = due_schedule(app)
    assert len(fire(app, row).created) == 1
    # When the same schedule row, as read before that commit, is fired again
    fired = fire(app, row)
    # Then nothing is created: the guarded advance found the schedule already moved on
    assert not fired.advanced and fired.created == []
    assert len(runs_of(app, "every")) == 1


def test_two_dispatchers_firing_the_same_due_time_at_once_create_one_run(app):
    # Given two dispatchers that both read the schedule as due
    row = due_schedule(app)
    results: list[store.Fired] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def race() -> None:
        try:
            start.wait()
            results.append(fire(app, row))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # When both fire it at once, then exactly one run exists and one of them advanced it
    assert not errors, errors
    assert sorted(r.advanced for r in results) == [False, True]
    assert len(runs_of(app, "every")) == 1


def test_catch_up_creates_every_missed_run_in_order(app):
    # Given a catch-up schedule whose dispatcher was away for three due times
    row = due_schedule(app, minutes_ago=3.5, catch_up=True)
    now = datetime.now(UTC)
    fired = fire(app, row, now)
    # Then a run for each missed minute was created, oldest first
    first, minutes = parse_stamp(row.next_due), []
    while first + timedelta(minutes=len(minutes)) <= now:
        minutes.append(run_name("every", first + timedelta(minutes=len(minutes))))
    assert len(minutes) >= 3
    assert fired.created == minutes
    assert [name for name, _ in runs_of(app, "every")] == minutes


def test_an_occurrence_whose_run_already_exists_is_not_created_twice(app):
    # Given the run of the due time already exists (a schedule removed and added again)
    row = due_schedule(app)
    now = datetime.now(UTC)
    name = run_name("every", now.replace(second=0, microsecond=0))
    with store.writing(app.engine) as session:
        store.create_run(session=session, name=name, scoped=True, schedule="every")
    # When the schedule fires for that due time
    fired = fire(app, row, now)
    # Then no second run is made (the primary key decides), and the schedule moves on
    assert fired.created == [] and fired.advanced
    assert fired.failed and "already exists" in fired.failed[0][1]
    with store.reading(app.engine) as session:
        assert store.list_tasks(session=session) == []


def test_schedule_use_cases_refuse_a_duplicate_and_a_missing_name(app):
    due_schedule(app, name="nightly")
    with pytest.raises(ScheduleError, match="already exists"):
        due_schedule(app, name="nightly")
    usecases.schedule_remove(app, "nightly")
    with pytest.raises(ScheduleError, match="no schedule named 'nightly'"):
        usecases.schedule_remove(app, "nightly")
    assert usecases.schedule_list(app) == []


def test_the_dispatcher_creates_a_due_run_once_and_dispatches_its_tasks(app):
    # Given a due schedule and a dispatcher holding the lease
    due_schedule(app)
    with store.reading(app.engine) as session:
        broker = MemoryBroker(namespace=store.namespace(session=session))
    dispatcher = Dispatcher(app.settings, app.engine, broker)
    dispatcher.start()
    # When it ticks
    stats = dispatcher.tick(block=False)
    # Then it created the run and dispatched the run's first task at once
    created = runs_of(app, "every")
    assert len(created) == 1
    assert stats.dispatched == 1
    assert broker.take().task_id == f"{created[0][0]}/fetch"
    # And ticking on (the schedule is next due in the future) creates nothing more
    for _ in range(3):
        dispatcher.tick(block=False)
    assert runs_of(app, "every") == created


def test_a_dispatcher_without_the_lease_creates_no_run(app):
    due_schedule(app)
    with store.reading(app.engine) as session:
        broker = MemoryBroker(namespace=store.namespace(session=session))
    dispatcher = Dispatcher(app.settings, app.engine, broker)
    dispatcher.tick(block=False)  # never took the lease
    assert runs_of(app, "every") == []


def test_the_dispatcher_reads_the_earliest_due_time_once_not_every_tick(app, monkeypatch):
    # Given a schedule due in an hour and a dispatcher holding the lease
    due_schedule(app, minutes_ago=0)
    later = datetime.now(UTC) + timedelta(hours=1)
    with store.writing(app.engine) as session:
        session.execute(store.SCHEDULES.update().values(next_due=store.stamp(later)))
    with store.reading(app.engine) as session:
        broker = MemoryBroker(namespace=store.namespace(session=session))
    dispatcher = Dispatcher(app.settings, app.engine, broker)
    dispatcher.start()
    reads = []
    original = store.next_schedule_due
    monkeypatch.setattr(store, "next_schedule_due", lambda **kw: reads.append(1) or original(**kw))
    # When it ticks a few times
    for _ in range(5):
        dispatcher.tick(block=False)
    # Then it read the earliest due time once, not once per tick
    assert len(reads) == 1


def test_the_dispatcher_blocks_no_longer_than_until_the_next_due_time(app):
    # Given a dispatcher with nothing to check for a while, and a schedule due in 0.3 s
    due_schedule(app, minutes_ago=0)
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    with store.writing(app.engine) as session:
        session.execute(store.SCHEDULES.update().values(next_due=store.stamp(soon)))
    with store.reading(app.engine) as session:
        broker = MemoryBroker(namespace=store.namespace(session=session))
    dispatcher = Dispatcher(app.settings, app.engine, broker)
    dispatcher._next_check = time.monotonic() + 60
    # Then its blocking read of reports wakes up for the due time
    assert dispatcher._block_seconds() <= 0.31
