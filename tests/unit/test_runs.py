"""Runs and the Python API's graph: run-scoped ids, run states, deleting tasks and
runs, and ``Graph``'s errors (the CLI's own lines).

Pure rules directly; the use cases on a real database (SQLite and PostgreSQL) with a
Redis that is missing (nothing here needs one).
"""

import json
from datetime import datetime, timedelta, timezone

import pytest
from helpers import query

from bridge import Client, Graph, GraphError, building, graph, runs, store, usecases
from bridge.settings import Settings

DEAD_REDIS = "redis://127.0.0.1:1/0"


def spec(task_id: str, **options) -> graph.TaskSpec:
    return graph.make_spec(task_id=task_id, **options)


def chain() -> list[graph.TaskSpec]:
    return [
        spec("fetch"),
        spec("parse", dependencies=["fetch"]),
        spec("count", dependencies=["parse"]),
    ]


@pytest.fixture
def app(db_url: str):
    app = usecases.App(Settings(database_url=db_url, redis_url=DEAD_REDIS), create=True)
    yield app
    app.close()


def set_status(db_url: str, task_id: str, status: str, attempts: int | None = None) -> None:
    query(db_url, "UPDATE tasks SET status = ? WHERE id = ?", status, task_id)
    if attempts is not None:
        query(db_url, "UPDATE tasks SET attempts = ? WHERE id = ?", attempts, task_id)


def finish(db_url: str, task_id: str) -> None:
    """A task done as the dispatcher would leave it: its dependents' counts go down."""
    set_status(db_url, task_id, "done", attempts=1)
    query(
        db_url,
        "UPDATE tasks SET pending_deps = pending_deps - 1"
        " WHERE id IN (SELECT task_id FROM task_edges WHERE depends_on = ?)",
        task_id,
    )


# ----------------------------------------------------------------------- run states


@pytest.mark.parametrize(
    ("counts", "ready", "state"),
    [
        ({}, 0, runs.EMPTY),
        ({"done": 3}, 0, runs.DONE),
        ({"done": 1, "available": 2}, 1, runs.RUNNING),
        ({"done": 1, "working": 1, "failed": 1}, 0, runs.RUNNING),
        ({"failed": 1, "available": 1}, 1, runs.RUNNING),
        ({"done": 1, "failed": 1, "available": 1}, 0, runs.FAILED),
        ({"failed": 1, "cancelled": 2}, 0, runs.FAILED),
        ({"done": 2, "cancelled": 1, "available": 1}, 0, runs.CANCELLED),
        ({"available": 2}, 0, runs.RUNNING),
    ],
)
def test_a_run_state_says_whether_more_can_run_and_why_not(counts, ready, state):
    assert runs.run_state(counts, ready) == state


@pytest.mark.parametrize("name", ["", "  ", " padded", "tab\there", "x" * 201, "a/b"])
def test_a_run_name_must_be_printable_and_not_blank(name):
    with pytest.raises(GraphError, match="run name"):
        runs.check_run_name(name)


# ----------------------------------------------------------------------- Graph


def test_graph_refuses_a_duplicate_id_at_once_with_the_cli_message():
    g = Graph()
    g.task("a")
    with pytest.raises(GraphError) as raised:
        g.task("a")
    with pytest.raises(GraphError) as cli:
        graph.unique_ids([spec("a"), spec("a")])
    assert str(raised.value) == str(cli.value) == "duplicate task id 'a'"


def test_graph_refuses_a_self_dependency_and_a_ref_of_another_graph_at_once():
    g, other = Graph(), Graph()
    with pytest.raises(GraphError, match="task 'a' depends on itself"):
        g.task("a", after=["a"])
    foreign = other.task("b")
    with pytest.raises(GraphError, match="dependency 'b' is a task of another graph"):
        g.task("c", after=[foreign])
    assert len(g) == 0


def file_error(tasks: list[dict]) -> str:
    """The line the CLI prints for this graph file."""
    with pytest.raises(GraphError) as raised:
        graph.check_new_graph(graph.parse_graph(json.dumps(tasks)), existing=())
    return str(raised.value)


def test_graph_cycle_and_unknown_dependency_give_the_cli_lines():
    cyclic = Graph()
    cyclic.task("a", after="c")
    cyclic.task("b", after="a")
    cyclic.task("c", after="b")
    with pytest.raises(GraphError) as raised:
        cyclic.check()
    assert str(raised.value) == file_error(cyclic.to_list())
    assert str(raised.value).startswith("dependency cycle: ")
    unknown = Graph()
    unknown.task("a", after=["ghost"])
    with pytest.raises(GraphError) as raised:
        unknown.check()
    assert str(raised.value) == "task 'a' depends on unknown task 'ghost'"
    unknown.check(existing=["ghost"])  # a stored task may be named by its id


def test_graph_takes_every_field_a_file_has_and_writes_the_same_file(tmp_path):
    g = Graph()
    first = g.task("first", kind="echo", payload={"n": 1}, description="one", priority=3)
    g.task(
        "second",
        kind="echo",
        after=[first],
        max_attempts=2,
        timeout=1.5,
        queue="gpu",
        pool="api",
        not_before="2030-01-01T00:00:00Z",
        delay="10m",
    )
    path = tmp_path / "g.json"
    g.write(path)
    from_file = graph.parse_graph(path.read_text())
    assert from_file == g.specs
    second = g.specs[1]
    assert (second.timeout, second.queue, second.pool, second.delay) == (1.5, "gpu", "api", 600)
    assert second.dependencies == ("first",) and second.not_before.startswith("2030-01-01 00:00")


def test_graph_takes_a_datetime_and_a_timedelta_for_the_delays(tmp_path):
    g = Graph()
    berlin = timezone(timedelta(hours=1))
    g.task("aware", not_before=datetime(2030, 1, 1, 3, 0, tzinfo=berlin))
    g.task("naive", not_before=datetime(2030, 1, 1, 2, 30))  # no zone: UTC, as the CLI
    g.task("later", delay=timedelta(minutes=10))
    aware, naive, later = g.specs
    assert aware.not_before == "2030-01-01 02:00:00.000000"
    assert naive.not_before == "2030-01-01 02:30:00.000000"
    assert later.delay == 600
    g.write(tmp_path / "g.json")
    assert graph.parse_graph((tmp_path / "g.json").read_text()) == g.specs
    with pytest.raises(GraphError, match="task 'x': not_before must be an ISO 8601 time or a"):
        g.task("x", not_before=1893456000)  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="task 'y': delay must be seconds, a duration such"):
        g.task("y", delay=[10])  # type: ignore[arg-type]
    assert [s.id for s in g.specs] == ["aware", "naive", "later"]


def test_graph_refuses_bad_fields_with_the_cli_messages():
    g = Graph()
    with pytest.raises(GraphError, match="task 'a': max_attempts must be at least 1"):
        g.task("a", max_attempts=0)
    with pytest.raises(GraphError, match="task 'b': payload is not JSON"):
        g.task("b", payload={1, 2})
    with pytest.raises(GraphError, match="task 'c': timeout must be"):
        g.task("c", timeout=-1)


def test_a_list_of_task_dicts_is_read_like_a_graph_file():
    specs = building.specs_of([{"id": "a"}, {"id": "b", "dependencies": ["a"]}])
    assert [s.id for s in specs] == ["a", "b"]
    with pytest.raises(GraphError, match=r"item 0 \('a'\): unknown key\(s\) after"):
        building.specs_of([{"id": "a", "after": ["x"]}])
    with pytest.raises(GraphError, match="submit a Graph or a list of tasks"):
        building.specs_of("graph.json")


# ----------------------------------------------------------------------- run-scoped ids


@pytest.mark.both_backends
def test_a_named_run_scopes_ids_so_one_graph_is_submitted_twice(app, db_url):
    # When the same graph is added as two runs
    first = usecases.add(app, chain(), run="nightly-1")
    second = usecases.add(app, chain(), run="nightly-2")
    # Then each stored id is run/id, the id as written kept, dependencies scoped too
    assert first.added == ["nightly-1/fetch", "nightly-1/parse", "nightly-1/count"]
    assert second.run == "nightly-2" and len(second.added) == 3
    rows = query(
        db_url, "SELECT id, run, local_id, dependencies FROM tasks WHERE run = ?", "nightly-2"
    )
    assert ("nightly-2/parse", "nightly-2", "parse", '["nightly-2/fetch"]') in rows
    assert query(
        db_url, "SELECT count(*) FROM task_edges WHERE depends_on = 'nightly-2/fetch'"
    ) == [(1,)]


@pytest.mark.both_backends
def test_a_taken_run_name_is_the_error_and_nothing_is_added(app, db_url):
    usecases.add(app, chain(), run="r")
    other = [spec("different")]
    with pytest.raises(GraphError, match="^run 'r' already exists$"):
        usecases.add(app, other, run="r")
    assert query(db_url, "SELECT count(*) FROM tasks") == [(3,)]


@pytest.mark.both_backends
def test_adding_a_named_run_again_with_skip_same_resumes_it(app, db_url):
    usecases.add(app, chain(), skip_same=True, run="r")
    again = usecases.add(app, chain(), skip_same=True, run="r")
    assert again.added == [] and len(again.skipped) == 3
    assert query(db_url, "SELECT name FROM runs") == [("r",)]


@pytest.mark.both_backends
def test_tasks_without_a_run_keep_their_ids_and_get_one_run_per_add(app, db_url):
    one = usecases.add(app, [spec("a")])
    two = usecases.add(app, [spec("b")])
    assert one.added == ["a"] and two.added == ["b"] and one.run != two.run
    assert dict(query(db_url, "SELECT id, run FROM tasks")) == {"a": one.run, "b": two.run}
    # And a resumed add that adds nothing makes no empty run
    usecases.add(app, [spec("a")], skip_same=True)
    assert len(query(db_url, "SELECT name FROM runs")) == 2


@pytest.mark.both_backends
def test_runs_are_listed_with_counts_and_state(app, db_url):
    usecases.add(app, chain(), run="ok")
    usecases.add(app, chain(), run="bad")
    for task in ("fetch", "parse", "count"):
        finish(db_url, f"ok/{task}")
    finish(db_url, "bad/fetch")
    set_status(db_url, "bad/parse", "failed", attempts=1)
    views = {v.name: v for v in usecases.list_runs(app)}
    assert views["ok"].state == "done" and views["ok"].counts == {"done": 3}
    assert views["bad"].state == "failed"
    assert views["bad"].counts == {"done": 1, "failed": 1, "available": 1}
    assert views["bad"].to_dict()["total"] == 3
    # When the failed task is retried with the run, the run runs again
    assert usecases.retry_run(app, "bad", failed_only=True).retried == ["bad/parse"]
    assert usecases.get_run(app, "bad").state == "running"


@pytest.mark.both_backends
def test_cancel_run_cancels_every_unfinished_task_only(app, db_url):
    usecases.add(app, chain(), run="r")
    finish(db_url, "r/fetch")
    result = usecases.cancel_run(app, "r")
    assert [c.task_id for c in result.cancelled] == ["r/parse", "r/count"]
    assert usecases.get_run(app, "r").state == "cancelled"
    with pytest.raises(store.TaskStateError, match="no run 'nope'"):
        usecases.cancel_run(app, "nope")


# ----------------------------------------------------------------------- deleting


@pytest.mark.both_backends
def test_delete_takes_finished_and_unstarted_tasks_with_their_history(app, db_url):
    usecases.add(app, [spec("done1"), spec("fresh"), spec("after", dependencies=["done1"])])
    finish(db_url, "done1")
    finish(db_url, "after")
    query(
        db_url,
        "INSERT INTO task_logs (task_id, attempt, at, level, message)"
        " VALUES (?, 1, ?, 'INFO', 'x')",
        "done1",
        "2026-01-01 00:00:00.000000",
    )
    deleted = usecases.delete_tasks(app, ["done1", "after", "fresh"])
    assert deleted.deleted == ["done1", "after", "fresh"]
    for table in ("tasks", "task_events", "task_logs", "task_edges"):
        assert query(db_url, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert query(db_url, "SELECT count(*) FROM runs") == [(0,)]  # left without tasks


@pytest.mark.both_backends
def test_delete_is_all_or_nothing(app, db_url):
    usecases.add(app, [spec("a"), spec("b"), spec("c", dependencies=["b"]), spec("d")])
    set_status(db_url, "d", "queued", attempts=1)
    before = query(db_url, "SELECT id, status FROM tasks ORDER BY id")
    # A task in flight may not go
    with pytest.raises(store.TaskStateError, match="cannot delete task 'd': it is queued"):
        usecases.delete_tasks(app, ["a", "d"])
    # Nor one an unfinished task (not deleted with it) depends on
    with pytest.raises(store.TaskStateError, match="task 'c' depends on it and is available"):
        usecases.delete_tasks(app, ["a", "b"])
    # Nor one dispatched before, back to available for a retry
    set_status(db_url, "a", "available", attempts=1)
    with pytest.raises(store.TaskStateError, match="'a': it is available and was dispatched"):
        usecases.delete_tasks(app, ["a"])
    with pytest.raises(store.TaskStateError, match="no task 'ghost'"):
        usecases.delete_tasks(app, ["b", "ghost"])
    assert query(db_url, "SELECT id, status FROM tasks ORDER BY id") == before
    # And a dependency goes with its dependent
    assert usecases.delete_tasks(app, ["b", "c"]).deleted == ["b", "c"]


@pytest.mark.both_backends
def test_deleting_a_failed_dependency_frees_a_cancelled_dependent_for_a_retry(app, db_url):
    usecases.add(app, [spec("a"), spec("b", dependencies=["a"])])
    set_status(db_url, "a", "failed", attempts=1)
    set_status(db_url, "b", "cancelled")
    usecases.delete_tasks(app, ["a"])
    assert query(db_url, "SELECT pending_deps FROM tasks WHERE id = 'b'") == [(0,)]


@pytest.mark.both_backends
def test_delete_run_only_when_finished_or_forced(app, db_url):
    usecases.add(app, chain(), run="r")
    usecases.add(app, [spec("other")])
    finish(db_url, "r/fetch")
    with pytest.raises(store.TaskStateError, match="run 'r' is running .*add --force"):
        usecases.delete_run(app, "r")
    forced = usecases.delete_run(app, "r", force=True)
    assert forced.cancelled == ["r/parse", "r/count"] and len(forced.deleted) == 3
    assert query(db_url, "SELECT name FROM runs WHERE name = 'r'") == []
    assert [t for (t,) in query(db_url, "SELECT id FROM tasks")] == ["other"]
    assert query(db_url, "SELECT count(*) FROM task_events WHERE task_id LIKE ?", "r/%") == [(0,)]


@pytest.mark.both_backends
def test_list_tasks_of_a_run(app):
    usecases.add(app, chain(), run="r")
    usecases.add(app, [spec("x")])
    assert [t.id for t in usecases.list_tasks(app, run="r")] == ["r/fetch", "r/parse", "r/count"]
    with pytest.raises(store.TaskStateError, match="no run 'nope'"):
        usecases.list_tasks(app, run="nope")


# ----------------------------------------------------------------------- Client


def test_client_submits_reads_and_times_out_without_a_dispatcher(db_url, monkeypatch):
    monkeypatch.setenv("BRIDGE_REDIS_URL", DEAD_REDIS)
    with Client(database_url=db_url) as client:
        g = Graph()
        g.task("a", kind="noop")
        run = client.submit(g, run="r1")
        assert run.name == "r1" and run.state == "running"
        assert run.ids() == {"a": "r1/a"}
        assert client.get("r1/a")["why"].startswith("ready")
        assert [r["name"] for r in client.runs()] == ["r1"]
        with pytest.raises(TimeoutError, match="run 'r1' is not finished after 0.3s"):
            run.wait(timeout=0.3)
        assert run.cancel() == ["r1/a"]
        assert run.wait(timeout=10) == {"a": "cancelled"}
        assert run.results() == {}
        unnamed = client.submit([{"id": "b"}])
        assert unnamed.name.startswith("add-") and unnamed.ids() == {"b": "b"}
        with pytest.raises(GraphError, match="^run 'r1' already exists$"):
            client.submit(g, run="r1")


def test_client_refuses_an_empty_graph_and_makes_no_run(db_url, monkeypatch):
    # As `bridge submit` refuses an empty file: no run without tasks is made.
    monkeypatch.setenv("BRIDGE_REDIS_URL", DEAD_REDIS)
    with Client(database_url=db_url) as client:
        for empty, name in ((Graph(), None), ([], "named"), (Graph(), "named")):
            with pytest.raises(GraphError, match="^the graph has no tasks: nothing to submit$"):
                client.submit(empty, run=name)
        assert client.runs() == [] and client.tasks() == []


def test_wait_for_chosen_tasks_names_a_missing_one_and_judges_only_those(app, db_url):
    usecases.add(app, [spec("a"), spec("b")])
    with pytest.raises(store.TaskStateError, match="no task 'ghost'"):
        usecases.wait(app, task_ids=["a", "ghost"], timeout=1)
    with pytest.raises(GraphError, match="task ids or a run, not both"):
        usecases.wait(app, task_ids=["a"], run="r", timeout=1)
    # a done, b failed: waiting for a alone ends 0, for b alone 1, for all 1
    finish(db_url, "a")
    set_status(db_url, "b", "failed", attempts=1)
    assert usecases.wait(app, task_ids=["a"], timeout=10).code == 0
    stuck = usecases.wait(app, task_ids=["b"], timeout=10)
    assert stuck.code == 1 and stuck.problems == ["b: failed"]
    assert usecases.wait(app, timeout=10).code == 1


def test_clean_forgets_the_runs_so_their_names_can_be_used_again(app):
    # Given a named run
    usecases.add(app, chain(), run="nightly")
    # When everything is cleaned
    usecases.clean(app)
    # Then no run is listed, and the name takes a new run
    assert usecases.list_runs(app) == []
    assert usecases.add(app, chain(), run="nightly").added
