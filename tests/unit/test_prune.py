"""Retention: the pruning rule, its batches and its re-checks, on SQLite and PostgreSQL.

Tasks are added through the store and then finished with plain SQL at chosen times, so
the rule is tested on exact completion times; the use case ``usecases.prune`` is what
``bridge db prune`` calls.
"""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from bridge import store, usecases
from bridge.app import App
from bridge.graph import make_spec
from bridge.settings import Settings, SettingsError, parse_duration
from bridge.store import prune as pruning

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
OLD = store.stamp(NOW - timedelta(days=40))
RECENT = store.stamp(NOW - timedelta(days=2))


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request, tmp_path):
    url = (
        f"sqlite:///{tmp_path / 't.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    engine = store.open_engine(url)
    with store.writing(engine) as session:
        store.reset_slots(session=session, slots=2)
    application = App(Settings(database_url=url), engine=engine)
    application.nudge = lambda: None  # no Redis in these tests
    yield application
    engine.dispose()


def add(app, *edges: tuple[str, ...]) -> None:
    """Tasks as ``(id, dependency, ...)`` tuples, added in one transaction."""
    specs = [make_spec(task_id=e[0], dependencies=e[1:]) for e in edges]
    with store.writing(app.engine) as session:
        store.add_tasks(session=session, specs=specs)


def finish(app, ids, status="done", at=OLD, *, completed=True) -> None:
    with store.writing(app.engine) as session:
        session.execute(
            text(
                "UPDATE tasks SET status = :s, completed_at = :c, updated_at = :u,"
                " pending_deps = 0 WHERE id = :id"
            ),
            [{"s": status, "c": at if completed else None, "u": at, "id": t} for t in ids],
        )


def ids(app) -> set[str]:
    with store.reading(app.engine) as session:
        return {r[0] for r in session.execute(text("SELECT id FROM tasks"))}


def dump(app) -> dict[str, list]:
    """Every row of the three task tables, sorted: equal dumps, equal databases."""
    out = {}
    with store.reading(app.engine) as session:
        for table in ("tasks", "task_edges", "task_events", "worker_slots"):
            rows = session.execute(text(f"SELECT * FROM {table}")).all()
            out[table] = sorted(tuple(str(v) for v in r) for r in rows)
    return out


def prune(app, older_than="30d", **kw) -> usecases.Pruned:
    return usecases.prune(app, older_than, clock=NOW, **kw)


def test_the_rule_keeps_whole_graphs_that_are_live_or_recent_and_takes_the_rest(app):
    # Given an old finished graph, one with a task still available, one with one recent
    # completion, isolated old tasks (done, failed, cancelled without completed_at) and an
    # isolated recent one
    add(app, ("g1",), ("g2", "g1"), ("g3", "g1"))
    add(app, ("l1",), ("l2", "l1"), ("l3", "l2"))
    add(app, ("r1",), ("r2", "r1"))
    add(app, ("i1",), ("i2",), ("i3",), ("i4",))
    finish(app, ["g1", "g2", "g3", "l1", "l2", "r1", "i1"])
    finish(app, ["r2", "i4"], at=RECENT)
    finish(app, ["i2"], status="failed")
    finish(app, ["i3"], status="cancelled", completed=False)

    # When pruning what finished more than 30 days ago
    result = prune(app)

    # Then the old finished graph and the old isolated tasks go; the graph with a live
    # task (l3, though l1 and l2 are old and done) and the one with a recent completion
    # stay whole, and so does the recent isolated task
    assert ids(app) == {"l1", "l2", "l3", "r1", "r2", "i4"}
    assert result.deleted == result.planned == 6
    assert result.components == 4
    assert result.sample == ["g1", "g2", "g3", "i1", "i2", "i3"]


def test_events_and_edges_of_pruned_tasks_go_with_them(app):
    # Given an old finished graph a <- b <- c beside a live task d that has its own history
    add(app, ("a",), ("b", "a"), ("c", "b"), ("d",))
    finish(app, ["a", "b", "c"])

    prune(app)

    with store.reading(app.engine) as session:
        edges = session.execute(text("SELECT count(*) FROM task_edges")).scalar()
        events = session.execute(text("SELECT DISTINCT task_id FROM task_events")).all()
    assert ids(app) == {"d"}
    assert edges == 0
    assert [e[0] for e in events] == ["d"]


def test_log_lines_of_pruned_tasks_go_with_them(app):
    # Given an old finished task and a live one, each with ctx.log lines
    add(app, ("old",), ("live",))
    finish(app, ["old"])
    with store.writing(app.engine) as session:
        session.execute(
            text(
                "INSERT INTO task_logs (task_id, attempt, at, level, message)"
                " VALUES (:t, 1, :at, 'INFO', 'line')"
            ),
            [{"t": "old", "at": OLD}, {"t": "live", "at": OLD}],
        )
    # When pruning
    prune(app)
    # Then the pruned task's lines went with it (the foreign key would refuse otherwise)
    with store.reading(app.engine) as session:
        kept = session.execute(text("SELECT task_id FROM task_logs")).all()
    assert ids(app) == {"live"}
    assert [k[0] for k in kept] == ["live"]


def test_a_task_held_by_a_worker_slot_keeps_its_graph(app):
    # Given an old finished graph one of whose tasks a slot row still names
    add(app, ("a",), ("b", "a"), ("z",))
    finish(app, ["a", "b", "z"])
    with store.writing(app.engine) as session:
        session.execute(text("UPDATE worker_slots SET active = 1, task_id = 'b' WHERE slot = 1"))

    prune(app)

    assert ids(app) == {"a", "b"}


def test_dry_run_changes_nothing(app):
    add(app, ("a",), ("b", "a"), ("c",))
    finish(app, ["a", "b"])
    before = dump(app)

    result = prune(app, dry_run=True)

    assert dump(app) == before
    assert (result.planned, result.deleted, result.sample) == (2, 0, ["a", "b"])


def test_more_than_a_batch_goes_in_one_run_in_batches_of_at_most_1000(app):
    # Given 2,300 old isolated tasks and one old graph of 1,500 tasks (a chain, larger
    # than a batch), and a live task
    add(app, *[(f"i{n:05d}",) for n in range(2300)])
    add(app, *[(f"c{n:05d}", f"c{n - 1:05d}") if n else ("c00000",) for n in range(1500)])
    add(app, ("live",))
    finish(app, [f"i{n:05d}" for n in range(2300)] + [f"c{n:05d}" for n in range(1500)])

    with store.reading(app.engine) as session:
        plan = pruning.plan_prune(session=session, cutoff=store.stamp(NOW - timedelta(days=30)))
    sizes = [sum(len(p.delete) for p in batch) for batch in plan.batches]
    assert max(sizes) <= 1000 and sum(sizes) == 3800 and len(sizes) >= 4

    result = prune(app)

    assert ids(app) == {"live"}
    assert result.deleted == 3800
    assert result.batches == len(sizes)


def test_a_retry_between_plan_and_delete_keeps_that_graph_whole(app, monkeypatch):
    # Given two old failed graphs
    add(app, ("a1",), ("a2", "a1"), ("b1",), ("b2", "b1"))
    finish(app, ["a1", "a2", "b1", "b2"], status="failed")
    real_plan = pruning.plan_prune

    def plan_then_retry(**kw):
        plan = real_plan(**kw)
        usecases.retry(app, "a2")  # a user reopens a2 after the plan was made
        return plan

    monkeypatch.setattr(pruning, "plan_prune", plan_then_retry)

    # When a prune planned before the retry deletes after it
    result = prune(app)

    # Then the reopened task's graph is kept whole, and the other one went
    assert ids(app) == {"a1", "a2"}
    assert result.kept == ["a1", "a2"]
    assert result.deleted == 2


def test_a_graph_split_over_batches_that_changes_keeps_the_rest_with_its_dependencies(app):
    # Given an old failed chain c0 <- c1 <- ... <- c24, pruned in batches of 10
    add(app, *[(f"c{n:02d}", f"c{n - 1:02d}") if n else ("c00",) for n in range(25)])
    finish(app, [f"c{n:02d}" for n in range(25)], status="failed")
    cutoff = store.stamp(NOW - timedelta(days=30))
    with store.reading(app.engine) as session:
        plan = pruning.plan_prune(session=session, cutoff=cutoff, chunk=10)
    assert len(plan.batches) == 3

    # When the first batch goes, then c05 is retried, then the other batches run
    skip: set[int] = set()
    for number, batch in enumerate(plan.batches):
        if number == 1:
            usecases.retry(app, "c05")
        with store.writing(app.engine) as session:
            skip |= pruning.prune_batch(session=session, batch=batch, cutoff=cutoff, skip=skip).kept

    # Then the first batch took dependents only (c15..c24), and everything c05 depends
    # on is still there, with c05 itself reopened
    left = ids(app)
    assert left == {f"c{n:02d}" for n in range(15)}
    with store.reading(app.engine) as session:
        assert store.get_task(session=session, task_id="c05").status == "available"


def test_archive_failure_deletes_nothing(app, tmp_path):
    add(app, ("a",), ("b", "a"))
    finish(app, ["a", "b"])
    before = dump(app)

    with pytest.raises(store.StoreError, match="cannot write archive"):
        prune(app, archive=str(tmp_path / "no-such-folder" / "a.gz"))

    assert dump(app) == before
    assert not list(tmp_path.glob("no-such-folder*"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("90m", 5400), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("1.5h", 5400)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "30x", "-5d", "0m", "d", "1.5.2h", "30 days"])
def test_bad_durations(text):
    with pytest.raises(SettingsError, match="give a number above 0 and a unit"):
        parse_duration(text)


def test_retention_is_off_by_default_and_checked_when_set():
    assert Settings.from_env({}).retention_seconds is None
    assert Settings.from_env({"BRIDGE_RETENTION": "30d"}).retention_seconds == 30 * 86400
    with pytest.raises(SettingsError, match="bad BRIDGE_RETENTION '30'"):
        Settings.from_env({"BRIDGE_RETENTION": "30"})
