"""The JSON API through a real ``bridge serve`` process: every route and error status."""

import json
import socket

import httpx
from conftest import free_port
from helpers import bridge, wait_until

GRAPH = [
    {"id": "fetch", "description": "get the data", "kind": "echo", "payload": {"n": 1}},
    {"id": "parse", "dependencies": ["fetch"]},
    {"id": "report", "dependencies": ["parse"], "description": "the <b>report</b>"},
]


def test_a_graph_posted_comes_back_listed_and_detailed(api):
    # Given a graph posted as a list
    created = api.post("/api/tasks", json=GRAPH)
    # Then it is added whole
    assert created.status_code == 201, created.text
    assert created.json()["ids"] == ["fetch", "parse", "report"]
    assert created.json()["run"]
    # When the tasks are listed
    listed = api.get("/api/tasks").json()
    # Then each is the `bridge list --json` object, in insertion order
    assert [t["id"] for t in listed["tasks"]] == ["fetch", "parse", "report"]
    assert listed["next_cursor"] is None
    assert listed["tasks"][0]["payload"] == {"n": 1}
    # When one task is asked for
    detail = api.get("/api/tasks/parse").json()
    # Then it comes with its neighbours, their states and its why line
    assert detail["dependency_states"] == [{"id": "fetch", "status": "available"}]
    assert detail["dependents"] == [{"id": "report", "status": "available"}]
    assert detail["why"].startswith("waiting for 1 dependency")
    assert detail["traceback"] is None


def test_a_single_task_object_and_a_named_run_scope_ids(api):
    created = api.post("/api/tasks", params={"run": "nightly"}, json={"id": "one"})
    assert created.status_code == 201
    assert created.json() == {"ids": ["nightly/one"], "run": "nightly"}
    # A task id with a slash is reached URL-encoded or not
    assert api.get("/api/tasks/nightly%2Fone").json()["local_id"] == "one"
    assert api.get("/api/tasks/nightly/one").json()["run"] == "nightly"
    assert [t["id"] for t in api.get("/api/tasks", params={"run": "nightly"}).json()["tasks"]] == [
        "nightly/one"
    ]


def test_bad_posts_get_their_status_and_change_nothing(api):
    assert api.post("/api/tasks", json=GRAPH[:1]).status_code == 201
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"42", 400, "task object or a list"),
        (json.dumps([{"id": "x", "colour": "red"}]).encode(), 400, "unknown key"),
        (json.dumps([]).encode(), 400, "no tasks"),
        (json.dumps([{"id": "fetch"}]).encode(), 409, "already exists"),
        (json.dumps([{"id": "y"}, {"id": "y"}]).encode(), 409, "duplicate task id"),
        (json.dumps([{"id": "z", "dependencies": ["nope"]}]).encode(), 422, "unknown task"),
        (
            json.dumps([{"id": "p", "dependencies": ["q"]}, {"id": "q", "dependencies": ["p"]}]),
            422,
            "cycle",
        ),
        (json.dumps([{"id": "ok"}, {"id": "bad", "dependencies": ["gone"]}]).encode(), 422, ""),
    ]
    for body, status, words in cases:
        response = api.post("/api/tasks", content=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert words in error and "\n" not in error
    # All or nothing: only the first task is there
    assert [t["id"] for t in api.get("/api/tasks").json()["tasks"]] == ["fetch"]


def test_a_body_over_the_limit_gets_413(start_server):
    server = start_server(BRIDGE_MAX_BODY="2048")
    with server.client() as api:
        big = [{"id": f"t{i}", "description": "x" * 100} for i in range(40)]
        response = api.post("/api/tasks", json=big)
        assert response.status_code == 413
        assert "over 2048 bytes" in response.json()["error"]

        def chunks():
            yield json.dumps(big).encode()

        chunked = api.post("/api/tasks", content=chunks())
        assert chunked.status_code == 413
        assert api.get("/api/tasks").json()["tasks"] == []


def test_retry_and_cancel_answer_404_409_and_200(api):
    api.post("/api/tasks", json=[{"id": "a"}, {"id": "b"}])
    assert api.post("/api/tasks/nope/retry").status_code == 404
    assert api.post("/api/tasks/nope/cancel").status_code == 404
    # retrying a task that has not failed is a conflict
    refused = api.post("/api/tasks/a/retry")
    assert refused.status_code == 409 and "cannot retry" in refused.json()["error"]
    cancelled = api.post("/api/tasks/a/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["task"]["status"] == "cancelled"
    assert api.post("/api/tasks/a/cancel").status_code == 409
    retried = api.post("/api/tasks/a/retry")
    assert retried.status_code == 200 and retried.json()["task"]["status"] == "available"
    assert api.get("/api/tasks/nope").status_code == 404


def test_pages_stay_stable_while_tasks_are_added(api):
    # Given 25 tasks
    api.post("/api/tasks", json=[{"id": f"t{i:03}"} for i in range(25)])
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = api.get("/api/tasks", params=params).json()
        seen += [t["id"] for t in page["tasks"]]
        # When tasks are added between pages
        api.post("/api/tasks", json=[{"id": f"new{added}"}])
        added += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Then no task is repeated or skipped, and the new ones come after the old
    assert seen[:25] == [f"t{i:03}" for i in range(25)]
    assert len(seen) == len(set(seen))
    assert all(s.startswith("new") for s in seen[25:])


def test_filters_and_bad_query_values(api):
    api.post(
        "/api/tasks",
        json=[{"id": "alpha", "description": "Load 100% of it"}, {"id": "beta"}],
    )
    api.post("/api/tasks/beta/cancel")
    by_status = api.get("/api/tasks", params={"status": "cancelled"}).json()["tasks"]
    assert [t["id"] for t in by_status] == ["beta"]
    assert [t["id"] for t in api.get("/api/tasks", params={"q": "ALP"}).json()["tasks"]] == [
        "alpha"
    ]
    assert [t["id"] for t in api.get("/api/tasks", params={"q": "100%"}).json()["tasks"]] == [
        "alpha"
    ]
    assert api.get("/api/tasks", params={"q": "_"}).json()["tasks"] == []
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": "x"},
        {"status": "sleepy"},
        {"cursor": "abc"},
    ):
        response = api.get("/api/tasks", params=params)
        assert response.status_code == 400, params
        assert set(response.json()) == {"error"}


def test_events_slots_summary_and_graph(api):
    api.post("/api/tasks", json=GRAPH)
    events = api.get("/api/events", params={"limit": 2}).json()
    assert [e["to_status"] for e in events["events"]] == ["available", "available"]
    assert set(events["events"][0]) == {
        "id",
        "task_id",
        "from_status",
        "to_status",
        "attempt",
        "worker",
        "at",
        "detail",
    }
    rest = api.get("/api/events", params={"after": events["next_after"]}).json()
    assert [e["task_id"] for e in rest["events"]] == ["report"] and rest["next_after"] is None
    assert api.get("/api/events", params={"task": "parse"}).json()["events"][0]["task_id"] == (
        "parse"
    )
    assert api.get("/api/events", params={"task": "nope"}).status_code == 404
    assert api.get("/api/slots").json() == {"slots": []}
    assert api.get("/api/workers").json() == {"workers": []}
    summary = api.get("/api/summary").json()
    assert summary["counts"] == {"available": 3} and summary["total"] == 3
    assert summary["queue_depth"] == 0 and summary["dispatcher"] is None
    assert summary["runs"] == 1
    drawn = api.get("/api/graph", params={"root": "report"}).json()
    assert [n["id"] for n in drawn["nodes"]] == ["fetch", "parse", "report"]
    assert drawn["edges"] == [{"from": "fetch", "to": "parse"}, {"from": "parse", "to": "report"}]
    mermaid = api.get("/api/graph", params={"root": "fetch", "format": "mermaid"})
    assert mermaid.headers["content-type"].startswith("text/plain")
    assert mermaid.text.startswith("flowchart LR") and "t0 --> t1" in mermaid.text
    dot = api.get("/api/graph", params={"format": "dot"}).text
    assert '"fetch" -> "parse";' in dot
    assert api.get("/api/graph", params={"root": "nope"}).status_code == 404
    assert api.get("/api/graph", params={"format": "png"}).status_code == 400


def test_healthz_says_503_when_redis_is_down(start_server, redis_server):
    server = start_server()
    with server.client() as api:
        healthy = api.get("/healthz")
        assert healthy.status_code == 200
        assert healthy.json() == {"database": "ok", "redis": "ok", "dispatcher": None}
        redis_server.stop()
        down = api.get("/healthz")
        assert down.status_code == 503
        assert down.json()["database"] == "ok" and down.json()["redis"] != "ok"
        # the rest of the API still answers from the database
        assert api.get("/api/summary").json()["queue_depth"] is None
        assert api.get("/api/workers").status_code == 503


def test_a_graph_runs_and_the_api_sees_it_finish(server, processes, tmp_path):
    with server.client() as api:
        api.post(
            "/api/tasks", json=[{"id": "a", "kind": "echo"}, {"id": "b", "dependencies": ["a"]}]
        )
        processes.start("dispatch", env=server.env)
        processes.start("worker", env=server.env)

        def done() -> bool:
            return api.get("/api/summary").json()["counts"] == {"done": 2}

        wait_until(done, timeout=90)
        summary = api.get("/api/summary").json()
        assert summary["dispatcher"]["live"] is True and summary["slots"] >= 1
        workers = api.get("/api/workers").json()["workers"]
        assert len(workers) == 1 and set(workers[0]) == {
            "name",
            "state",
            "current_task",
            "last_heartbeat",
            "queues",
        }
        assert api.get("/healthz").json()["dispatcher"]["live"] is True


def test_openapi_describes_the_routes_with_their_parameters(api):
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/api/tasks", "/api/tasks/{task_id}", "/api/events", "/api/graph", "/healthz"):
        assert path in paths
    names = {p["name"] for p in paths["/api/tasks"]["get"]["parameters"]}
    assert names == {"status", "q", "run", "limit", "cursor"}
    assert "requestBody" in paths["/api/tasks"]["post"]


def test_serve_refuses_a_public_host_without_a_token(bridge_env):
    result = bridge("serve", "--host", "0.0.0.0", env=bridge_env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to listen on 0.0.0.0")
    assert "BRIDGE_API_TOKEN" in lines[0]


def test_serve_on_a_port_in_use_says_so_in_one_line(bridge_env):
    # Given a port something already listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When bridge serve is asked to listen there
        result = bridge("serve", "--port", str(port), env=bridge_env)
    # Then it refuses in one line (not uvicorn's log), with a non-zero exit
    assert result.returncode != 0
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_serve_on_a_database_it_cannot_open_says_so_in_one_line(bridge_env, tmp_path):
    env = {**bridge_env, "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/missing/dir/x.db"}
    result = bridge("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot open"), (
        result.stderr
    )


def test_bridge_graph_prints_mermaid_and_dot(api, server):
    api.post("/api/tasks", json=GRAPH)
    mermaid = bridge("graph", "parse", env=server.env)
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("flowchart LR")
    dot = bridge("graph", "--format", "dot", env=server.env)
    assert '"parse" -> "report";' in dot.stdout
    missing = bridge("graph", "nope", env=server.env)
    assert missing.returncode == 1 and missing.stderr == "error: no task 'nope'\n"


def test_every_response_carries_the_security_headers(api):
    for response in (api.get("/api/tasks"), api.get("/healthz"), api.get("/api/tasks/nope")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_unknown_routes_answer_json_404(api):
    response = api.get("/api/nothing")
    assert response.status_code == 404 and set(response.json()) == {"error"}
    assert isinstance(httpx.Response, type)


def test_summary_counts_follow_changes_and_a_clean(api, server):
    api.post("/api/tasks", json=[{"id": "a"}, {"id": "b"}])
    assert api.get("/api/summary").json()["counts"] == {"available": 2}
    api.post("/api/tasks/a/cancel")
    assert api.get("/api/summary").json()["counts"] == {"available": 1, "cancelled": 1}
    # a clean deletes the tasks and their events: the counts are taken again
    assert bridge("clean", "--yes", env=server.env).returncode == 0
    assert api.get("/api/summary").json()["counts"] == {}
    api.post("/api/tasks", json={"id": "c"})
    assert api.get("/api/summary").json()["counts"] == {"available": 1}


def test_empty_query_parameters_mean_no_filter(api):
    # Given a graph
    api.post("/api/tasks", json=GRAPH)
    # When the routes are called with every parameter given empty, as the issue writes them
    tasks = api.get("/api/tasks?status=&q=&run=&limit=&cursor=")
    events = api.get("/api/events?task=&after=&limit=")
    drawn = api.get("/api/graph?root=&format=json")
    # Then an empty parameter is as if absent
    assert tasks.status_code == 200, tasks.text
    assert [t["id"] for t in tasks.json()["tasks"]] == ["fetch", "parse", "report"]
    assert events.status_code == 200 and len(events.json()["events"]) == 3, events.text
    assert drawn.status_code == 200 and len(drawn.json()["nodes"]) == 3, drawn.text
    # And a value is still checked
    assert api.get("/api/tasks?status=&limit=0").status_code == 400
