"""A Redis that restarts with its data (RDB/AOF, the default of most installs) must not
fail a healthy running task.

On a new Redis run id the dispatcher re-sends everything in flight. It fences each
attempt first; an attempt whose worker is alive is "left alone", but its mark stays:
the worker kills the work horse at its next heartbeat, and the attempt is then failed
as ``WorkerLost``. With ``--max-attempts 1`` a task whose worker never faltered ends
``failed``.
"""

import json

import redis
from helpers import bridge, bridge_json, wait_until


def test_a_running_task_survives_a_redis_restart_that_keeps_its_data(
    tmp_path, redis_server, bridge_env, processes
):
    # Given a task running on a healthy forking worker
    log = tmp_path / "marks.log"
    payload = json.dumps({"log": str(log), "name": "t", "sleep": 8})
    added = bridge("add", "t", "--kind", "marked_sleep", "--payload", payload, env=bridge_env)
    assert added.returncode == 0, added.stderr
    env = {**bridge_env, "BRIDGE_WORKER_CLASS": "fork"}
    processes.start("dispatch", env=env)
    processes.start("worker", env=env)
    wait_until(lambda: log.exists() and "start t" in log.read_text(), timeout=30)
    wait_until(lambda: bridge_json("show", "t", env=env)["status"] == "working", timeout=30)
    # When Redis restarts with its data (snapshot, then a restart that loads it)
    client = redis.Redis.from_url(redis_server.url)
    client.save()
    client.close()
    redis_server.restart()
    job_id = bridge_json("show", "t", env=env)["job_id"]
    client = redis.Redis.from_url(redis_server.url)
    assert client.exists(f"rq:job:{job_id}"), "the restarted Redis did not load its snapshot"
    client.close()
    # Then the handler runs to its end and the task is done, not failed as a lost worker
    final = {"done", "failed"}
    wait_until(lambda: bridge_json("show", "t", env=env)["status"] in final, timeout=60)
    task = bridge_json("show", "t", env=env)
    assert task["status"] == "done", (task, processes.logs())
    assert "end t" in log.read_text()
