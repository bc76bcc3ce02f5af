"""The everyday CLI flows, through the real command and real processes."""

import json
import socket
from pathlib import Path

import pytest
from helpers import bridge, bridge_json, statuses

from bridge.redis_server import PrivateRedis
from bridge.runner import resolve_redis
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.both_backends
def test_run_the_example_then_rerun_resumes(tmp_path, bridge_env, db_url):
    # Given the README's example graph
    example = ROOT / "examples" / "pipeline.json"
    # When it is run with the one command
    first = bridge("run", str(example), "--workers", "2", env=bridge_env, cwd=tmp_path, timeout=180)
    # Then everything is done and a summary is printed
    assert first.returncode == 0, first.stdout + first.stderr
    assert "summary: 11 done" in first.stdout
    assert set(statuses(db_url).values()) == {"done"}
    # When it is run again, nothing is added and nothing runs again
    events_before = len(bridge_json("events", env=bridge_env))
    again = bridge("run", str(example), env=bridge_env, cwd=tmp_path, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "added 0 task(s), 11 already there" in again.stdout
    assert len(bridge_json("events", env=bridge_env)) == events_before


def test_run_starts_a_private_redis_when_none_answers_and_none_was_asked_for():
    # Given a default (not explicit) Redis URL where nothing listens
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    # When the runner resolves Redis
    resolved, private = resolve_redis(settings)
    try:
        # Then it started its own and points the settings at it
        assert isinstance(private, PrivateRedis)
        assert resolved.redis_url == private.url != settings.redis_url
    finally:
        private.stop()


def test_run_refuses_an_explicit_redis_that_does_not_answer(tmp_path, bridge_env):
    env = {**bridge_env, "BRIDGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps([{"id": "a"}]))
    result = bridge("run", str(graph), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://127.0.0.1:")


def test_failure_stops_wait_then_retry_resumes_the_graph(tmp_path, bridge_env, processes):
    # Given a graph whose middle task fails
    graph = tmp_path / "g.json"
    graph.write_text(
        json.dumps(
            [
                {"id": "first", "kind": "echo", "payload": 1},
                {
                    "id": "middle",
                    "kind": "fail",
                    "payload": {"message": "broken"},
                    "dependencies": ["first"],
                },
                {"id": "last", "dependencies": ["middle"]},
            ]
        )
    )
    assert bridge("add", "--file", str(graph), env=bridge_env).returncode == 0
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    # When we wait, it stops with 1 and names the failed task
    waited = bridge("wait", "--timeout", "60", "--quiet", env=bridge_env, timeout=90)
    assert waited.returncode == 1, waited.stderr + processes.logs()
    assert "middle: failed (TaskFailed: broken)" in waited.stderr
    shown = bridge_json("show", "last", env=bridge_env)
    assert shown["status"] == "available" and shown["why"].startswith("blocked")
    # When the failed task is retried, it runs again (and fails again, being `fail`)
    assert bridge("retry", "middle", env=bridge_env).returncode == 0
    waited = bridge("wait", "--timeout", "60", "--quiet", env=bridge_env, timeout=90)
    assert waited.returncode == 1
    events = bridge_json("events", "middle", env=bridge_env)
    # (a start report overtaken by its attempt's outcome is recorded as ignored, from
    # failed to failed: count the transitions into failed)
    assert sum(1 for e in events if e["to"] == "failed" and e["from"] != "failed") == 2
    assert any(e["detail"] == "retried by user" for e in events)


def test_wait_times_out_with_3_when_nothing_runs(bridge_env):
    assert bridge("add", "lonely", env=bridge_env).returncode == 0
    result = bridge("wait", "--timeout", "1", "--quiet", env=bridge_env)
    assert result.returncode == 3
    assert "timed out" in result.stderr


def test_cancel_a_queued_task_removes_its_job(bridge_env, redis_server, processes):
    # Given a task queued by a dispatcher with no worker running
    assert bridge("add", "t1", env=bridge_env).returncode == 0
    assert bridge("dispatch", "--once", env=bridge_env).returncode == 0
    task = bridge_json("show", "t1", env=bridge_env)
    assert task["status"] == "queued"
    import redis

    client = redis.Redis.from_url(redis_server.url)
    assert client.lrange("rq:queue:bridge", 0, -1) == [task["job_id"].encode()]
    # When it is cancelled
    result = bridge("cancel", "t1", env=bridge_env)
    # Then the job left the queue and the task is cancelled, its slot free
    assert result.returncode == 0, result.stderr
    assert "removed from the queue" in result.stdout
    assert client.lrange("rq:queue:bridge", 0, -1) == []
    assert bridge_json("show", "t1", env=bridge_env)["status"] == "cancelled"
    assert not any(s["active"] for s in bridge_json("slots", env=bridge_env))
    # And wait reports that nothing more can run
    assert bridge("wait", "--timeout", "5", "--quiet", env=bridge_env).returncode == 1
