"""The live stream (SSE, resumable) and the Prometheus scrape, over a real serve."""

import json
import threading
import time

from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families


def read_events(client, count: int, headers: dict[str, str] | None = None, timeout=60):
    """The first ``count`` SSE events of ``/api/stream`` (id, event and parsed data)."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", "/api/stream", headers=headers or {}, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict = {}
        for line in response.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                events.append(current)
                current = {}
                if len(events) >= count:
                    break
            if time.monotonic() > deadline:
                break
    return events


def test_the_stream_resumes_after_last_event_id(api):
    # Given three tasks added (three events)
    api.post("/api/tasks", json=[{"id": "a"}, {"id": "b"}, {"id": "c"}])
    first = api.get("/api/events").json()["events"][0]["id"]
    # When a client resumes after the first event
    events = read_events(api, 2, headers={"Last-Event-ID": str(first)})
    # Then it gets exactly the ones after it, in order, in the contract's shape
    assert [e["data"]["task_id"] for e in events] == ["b", "c"]
    assert [e["id"] for e in events] == [first + 1, first + 2]
    assert events[0]["event"] == "task"
    assert set(events[0]["data"]) == {"id", "task_id", "from_status", "to_status", "attempt", "at"}


def test_the_stream_sends_state_changes_only_never_an_ignored_report(api):
    # Given a claimed task, a stale completion of it (refused: an "ignored" audit row),
    # then another task
    api.post("/api/tasks", json={"id": "a", "kind": "external"})
    claimed = api.post("/api/claims", json={"kinds": ["external"], "worker": "w"})
    assert claimed.status_code == 200, claimed.text
    refused = api.post("/api/tasks/a/complete", json={"attempt": 7, "output": 1})
    assert refused.status_code == 409
    api.post("/api/tasks", json={"id": "b"})
    rows = api.get("/api/events").json()["events"]
    assert any(r["from_status"] == r["to_status"] for r in rows), rows  # the audit row is kept
    # When a client reads the stream from the start
    events = read_events(api, 3, headers={"Last-Event-ID": "0"})
    # Then it sees the three state changes and nothing of the ignored report
    assert [(e["data"]["task_id"], e["data"]["to_status"]) for e in events] == [
        ("a", "available"),
        ("a", "working"),
        ("b", "available"),
    ]


def test_the_stream_resumes_from_events_older_than_the_server(start_server, bridge_env):
    # Given events written before the server started (none of them in its memory)
    from helpers import bridge

    assert bridge("add", "x", env=bridge_env).returncode == 0
    assert bridge("add", "y", env=bridge_env).returncode == 0
    server = start_server()
    with server.client() as api:
        first = api.get("/api/events").json()["events"][0]["id"]
        # When a client resumes after the first of them
        events = read_events(api, 1, headers={"Last-Event-ID": str(first)})
    # Then it catches up from the database
    assert [e["data"]["task_id"] for e in events] == ["y"]


def test_a_change_reaches_a_connected_client(api):
    # Given a client connected with no Last-Event-ID (from now on)
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(read_events(api, 1)), daemon=True)
    reader.start()
    time.sleep(1.5)
    # When a task is added
    api.post("/api/tasks", json={"id": "late"})
    reader.join(timeout=60)
    # Then its event arrives
    assert got and got[0]["data"]["task_id"] == "late"
    assert got[0]["data"]["to_status"] == "available"


def test_sigterm_ends_open_streams_at_once_without_a_traceback(server, processes):
    # Given a client following the stream (the dashboard always is)
    opened = threading.Event()
    ended: list[bool] = []

    def follow() -> None:
        with server.client() as client, client.stream("GET", "/api/stream") as response:
            opened.set()
            for _ in response.iter_lines():
                pass
        ended.append(True)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(30)
    time.sleep(0.5)
    # When the server gets SIGTERM
    started = time.monotonic()
    processes.stop(server.process)  # type: ignore[arg-type]
    took = time.monotonic() - started
    reader.join(timeout=10)
    # Then the stream ends cleanly and the server does not wait out its grace for it
    assert ended == [True]
    assert took < 2.5, took
    assert "Traceback" not in processes.logs()


def test_a_bad_last_event_id_is_400(api):
    response = api.get("/api/stream", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 400 and set(response.json()) == {"error"}


def test_a_prometheus_scrape_parses_and_counts(server, processes):
    with server.client() as api:
        api.post(
            "/api/tasks",
            json=[{"id": "a", "kind": "echo"}, {"id": "b", "kind": "echo", "dependencies": ["a"]}],
        )
        processes.start("dispatch", env=server.env)
        processes.start("worker", env=server.env)
        wait_until(lambda: api.get("/api/summary").json()["counts"] == {"done": 2}, timeout=90)
        scrape = api.get("/metrics")
        events = api.get("/api/events").json()["events"]
    ignored = [e for e in events if (e["detail"] or "").startswith("ignored:")]
    applied = [
        e
        for e in events
        if e["from_status"] in ("queued", "working")
        and e["to_status"] in ("working", "done")
        and e not in ignored
    ]
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("bridge_tasks", (("status", "done"),))] == 2
    assert samples[("bridge_tasks_in_flight", ())] == 0
    assert samples[("bridge_workers", ())] == 1
    assert samples[("bridge_queue_depth", ())] == 0
    assert samples[("bridge_dispatcher_up", ())] == 1
    assert families["bridge_task_duration_seconds"].type == "histogram"
    assert samples[("bridge_task_duration_seconds_count", (("kind", "echo"),))] == 2
    assert samples[("bridge_task_queue_wait_seconds_count", (("kind", "echo"),))] == 2
    # counted from the audit trail, as the events route shows it
    assert samples[("bridge_reports_applied_total", ())] == len(applied) >= 2
    assert samples[("bridge_reports_ignored_total", ())] == len(ignored)
