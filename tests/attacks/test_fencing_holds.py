"""Attacks on fencing that fail today: kept as regression tests.

A run started before ``bridge clean`` must never complete the task re-added under
the same id afterwards, and a worker must never start an attempt that was fenced
off, even when the job is still on the queue.
"""

import json

import pytest
import redis
from helpers import bridge, bridge_json, wait_until
from rq import Queue
from rq.serializers import JSONSerializer

from bridge.broker.keys import Keys
from bridge.messages import JOB_FUNCTION, Dispatch


def test_a_run_started_before_clean_never_completes_the_task_re_added_after(
    tmp_path, bridge_env, processes
):
    # Given a task running on a simple worker (which cannot be stopped)
    log = tmp_path / "marks.log"
    payload = json.dumps({"log": str(log), "name": "old", "sleep": 4})
    added = bridge("add", "t", "--kind", "marked_sleep", "--payload", payload, env=bridge_env)
    assert added.returncode == 0, added.stderr
    env = {**bridge_env, "BRIDGE_WORKER_CLASS": "simple"}
    processes.start("dispatch", env=env)
    processes.start("worker", env=env)
    wait_until(lambda: log.exists() and "start old" in log.read_text(), timeout=30)
    # When the database is cleaned and a task of the same id added again
    assert bridge("clean", "--yes", env=bridge_env).returncode == 0
    new = json.dumps({"v": 2})
    assert bridge("add", "t", "--kind", "echo", "--payload", new, env=bridge_env).returncode == 0
    # Then the old run ends and reports, and the new task gets its own output only
    wait_until(lambda: "end old" in log.read_text(), timeout=30)
    wait_until(lambda: bridge_json("show", "t", env=bridge_env)["status"] == "done", timeout=30)
    assert bridge_json("show", "t", env=bridge_env)["output"] == {"v": 2}


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_a_fenced_job_still_on_the_queue_is_never_started(tmp_path, redis_server, bridge_env, mode):
    # Given a bridge job on the queue whose attempt was fenced off meanwhile
    client = redis.Redis.from_url(redis_server.url)
    namespace, job_id = "0123456789ab", "bridge-t-0123456789ab-t7"
    log = tmp_path / "marks.log"
    payload = json.dumps({"log": str(log), "name": "fenced"})
    fields = Dispatch("t", 1, job_id, "record", payload, None, "bridge", namespace)
    Queue("bridge", connection=client, serializer=JSONSerializer).enqueue(
        JOB_FUNCTION, job_id=job_id, kwargs=fields.encode()
    )
    client.set(Keys(namespace).fence(job_id), "1")
    # When a worker drains the queue
    result = bridge("worker", "--burst", env={**bridge_env, "BRIDGE_WORKER_CLASS": mode})
    # Then the handler never ran and the job record is gone
    assert result.returncode == 0, result.stderr
    assert not log.exists()
    assert "superseded or cancelled" in result.stderr
    assert not client.exists(f"rq:job:{job_id}")
    client.close()
