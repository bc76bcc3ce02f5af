"""The Python API against a real dispatcher and worker: submit a Graph, wait for the
run, read its decoded results, retry what failed."""

from bridge import Client, Graph


def test_a_graph_submitted_from_python_runs_and_its_results_come_back(
    bridge_env, db_url, redis_server, processes
):
    # Given a dispatcher and a worker
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    with Client(database_url=db_url, redis_url=redis_server.url) as client:
        # When a three-step graph is submitted twice as two named runs
        g = Graph()
        first = g.task("first", kind="echo", payload={"n": 1})
        second = g.task("second", kind="echo", payload=[1, "two"], after=[first])
        g.task("third", kind="noop", after=[second], timeout=30.5)
        one = client.submit(g, run="one")
        two = client.submit(g, run="two")
        # Then each run is waited for, and its outputs come back decoded
        states = one.wait(timeout=90)
        assert states == {"first": "done", "second": "done", "third": "done"}, processes.logs()
        assert one.results() == {"first": {"n": 1}, "second": [1, "two"], "third": None}
        assert two.wait(timeout=90) == states
        assert client.get("two/second")["output"] == [1, "two"]
        assert {r["name"]: r["state"] for r in client.runs()} == {"one": "done", "two": "done"}
        # And a failed run says so, and is retried from Python
        bad = client.submit([{"id": "boom", "kind": "fail", "payload": "no"}])
        assert bad.wait(timeout=60) == {"boom": "failed"}
        assert bad.state == "failed" and bad.results() == {}
        assert bad.retry(failed=True) == ["boom"]
        assert bad.wait(timeout=60) == {"boom": "failed"}
        assert client.status()["counts"] == {"done": 6, "failed": 1}
