"""External tasks through the real CLI, a real dispatcher and RQ worker, a private Redis:
agents claim, complete and fail them; the dispatcher never sends them to RQ, leaves a
live claim alone and fails a lapsed one as lost."""

import json
import time

import redis
from helpers import bridge, bridge_json, query, wait_until

from bridge.defaults import CHECK_EVERY, LOST_JOB_GRACE


def claim(env: dict[str, str], worker: str = "agent") -> dict:
    """``bridge claim --json`` until it claims something (exit 3 means nothing yet)."""
    found: dict = {}

    def claimed() -> bool:
        result = bridge("claim", "--worker", worker, "--json", env=env)
        assert result.returncode in (0, 3), result.stderr
        if result.returncode == 0:
            found.update(json.loads(result.stdout))
        return bool(found)

    wait_until(claimed, timeout=60, every=0.3)
    return found


def test_a_graph_mixing_rq_tasks_and_an_agent_task_finishes(
    tmp_path, bridge_env, db_url, redis_server, processes
):
    # Given a graph whose middle task is external, run by a dispatcher and an RQ worker
    graph = tmp_path / "g.json"
    graph.write_text(
        json.dumps(
            [
                {"id": "fetch", "kind": "echo", "payload": 1},
                {"id": "review", "kind": "external", "dependencies": ["fetch"]},
                {"id": "publish", "kind": "echo", "payload": 2, "dependencies": ["review"]},
            ]
        )
    )
    added = bridge("add", "--file", str(graph), env=bridge_env)
    assert added.returncode == 0, added.stderr
    assert "no handler" not in added.stderr  # an agent runs it: no handler is expected
    nothing = bridge("claim", "--worker", "agent", env=bridge_env)
    assert nothing.returncode == 3 and "nothing to claim" in nothing.stderr
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    # When an agent claims the external task once it is ready
    claimed = claim(bridge_env)
    assert claimed["task"]["id"] == "review" and claimed["attempt"] == 1
    assert query(db_url, "SELECT status FROM tasks WHERE id = 'fetch'") == [("done",)]
    # Then the dispatcher, reconciling meanwhile, leaves the claim alone and holds no slot
    time.sleep(LOST_JOB_GRACE + 3 * CHECK_EVERY)
    shown = bridge_json("show", "review", env=bridge_env)
    assert (shown["status"], shown["attempts"], shown["job_id"]) == (
        "working",
        1,
        claimed["task"]["job_id"],
    ), processes.logs()
    assert shown["why"].startswith("claimed by agent")
    assert not any(s["task_id"] == "review" for s in bridge_json("slots", env=bridge_env))
    # When the agent completes it
    done = bridge(
        "complete", "review", "--attempt", "1", "--output", '{"ok": true}', env=bridge_env
    )
    assert done.returncode == 0, done.stderr
    # Then the rest of the graph runs to the end
    waited = bridge("wait", "--timeout", "60", "--quiet", env=bridge_env, timeout=90)
    assert waited.returncode == 0, waited.stderr + processes.logs()
    assert bridge_json("show", "review", env=bridge_env)["output"] == {"ok": True}
    # And the external task never went through RQ: never queued, no job in Redis
    trail = bridge_json("events", "review", env=bridge_env)
    assert "queued" not in {e["to"] for e in trail}
    client = redis.Redis.from_url(redis_server.url)
    assert not list(client.scan_iter("rq:job:external-*"))
    # And a second completion of the same attempt is refused, changing nothing
    again = bridge("complete", "review", "--attempt", "1", "--output", '"twice"', env=bridge_env)
    assert again.returncode == 1
    assert again.stderr.startswith("error: stale attempt 1 of task 'review'")
    assert bridge_json("show", "review", env=bridge_env)["output"] == {"ok": True}


def test_a_lapsed_claim_is_retried_then_failed_and_a_stale_completion_refused(
    bridge_env, processes
):
    # Given an external task with two attempts, claims that lapse after 1 s
    env = {**bridge_env, "BRIDGE_CLAIM_TTL": "1"}
    added = bridge("add", "ext", "--kind", "external", "--max-attempts", "2", env=env)
    assert added.returncode == 0, added.stderr
    processes.start("dispatch", env=env)
    first = claim(env, "agent-1")
    # When no heartbeat comes, the dispatcher fails the attempt as lost: retried
    wait_until(lambda: bridge_json("show", "ext", env=env)["failures"] == 1, timeout=60)
    shown = bridge_json("show", "ext", env=env)
    assert shown["status"] == "available", processes.logs()
    assert shown["error"].startswith("WorkerLost: the claim of attempt 1 by agent-1 lapsed")
    # When another agent claims the retry, the first one's completion is refused
    second = claim(env, "agent-2")
    assert second["attempt"] == 2 == first["attempt"] + 1
    stale = bridge("complete", "ext", "--attempt", "1", env=env)
    assert stale.returncode == 1
    assert "stale attempt 1 of task 'ext': the task is at attempt 2" in stale.stderr
    # When the second claim lapses too, no attempts are left: the graph stops, failed
    waited = bridge("wait", "--timeout", "60", "--quiet", env=env, timeout=90)
    assert waited.returncode == 1, waited.stderr + processes.logs()
    assert bridge_json("show", "ext", env=env)["status"] == "failed"


def test_an_agent_fails_its_task_and_a_cancelled_claim_refuses_completion(bridge_env):
    # Given two claimed external tasks (no dispatcher needed to claim)
    assert bridge("add", "a", "--kind", "external", env=bridge_env).returncode == 0
    assert bridge("add", "b", "--kind", "external", env=bridge_env).returncode == 0
    assert claim(bridge_env)["task"]["id"] == "a"
    assert claim(bridge_env)["task"]["id"] == "b"
    # When the agent fails one, it is failed (one attempt), the error kept
    failed = bridge("fail", "a", "--attempt", "1", "--error", "the API said no", env=bridge_env)
    assert failed.returncode == 0, failed.stderr
    assert "no attempts left" in failed.stdout
    assert bridge_json("show", "a", env=bridge_env)["error"] == "the API said no"
    # When the other is cancelled while claimed, Redis is not asked about a job
    cancelled = bridge("cancel", "b", env=bridge_env)
    assert cancelled.returncode == 0 and cancelled.stderr == "", cancelled.stderr
    assert "claim is revoked" in cancelled.stdout
    # Then its completion and heartbeat are refused and it stays cancelled
    late = bridge("complete", "b", "--attempt", "1", env=bridge_env)
    assert late.returncode == 1 and "the task is cancelled" in late.stderr
    assert bridge("heartbeat", "b", "--attempt", "1", env=bridge_env).returncode == 1
    assert bridge_json("show", "b", env=bridge_env)["status"] == "cancelled"


def test_bad_claim_input_is_one_line_and_changes_nothing(bridge_env, db_url):
    assert bridge("add", "a", "--kind", "external", env=bridge_env).returncode == 0
    cases = [
        (["claim", "--worker", "w", "--kind", "echo"], "are not external"),
        (["claim"], "Missing option '--worker'"),
        (["complete", "a", "--attempt", "0"], "--attempt"),
        (["complete", "a", "--attempt", "1", "--output", "{nope"], "--output is not valid JSON"),
        (["fail", "a", "--attempt", "1"], "Missing option '--error'"),
        (["heartbeat", "nope", "--attempt", "1"], "no task 'nope'"),
    ]
    before = query(db_url, "SELECT count(*) FROM task_events")
    for args, message in cases:
        result = bridge(*args, env=bridge_env)
        assert result.returncode != 0, args
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert query(db_url, "SELECT count(*) FROM task_events") == before
