"""RQ's command channel (``rq:pubsub:<worker>``) is writable by anyone who can write
to Redis. One message that is not JSON ends the worker's listener thread for good
(RQ logs "pubsub thread exiting"), so ``bridge cancel``'s stop command is never
heard again. Cancel must still stop a running job: the fencing mark does, at the
worker's next heartbeat. A regression test for an attack that fails today.
"""

import json
import time

import redis
from helpers import bridge, bridge_json, wait_until


def test_cancel_still_stops_a_running_job_after_the_command_listener_died(
    tmp_path, redis_server, bridge_env, processes
):
    # Given a forking worker whose command listener was killed by a malformed message
    env = {**bridge_env, "BRIDGE_WORKER_CLASS": "fork"}
    processes.start("worker", "--name", "w1", env=env)
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: client.pubsub_numsub("rq:pubsub:w1")[0][1] == 1, timeout=30)
    client.publish("rq:pubsub:w1", b"not json")
    wait_until(lambda: "pubsub thread exiting" in processes.logs(), timeout=10)
    # And a task running on it
    log = tmp_path / "marks.log"
    payload = json.dumps({"log": str(log), "name": "t", "sleep": 10})
    added = bridge("add", "t", "--kind", "marked_sleep", "--payload", payload, env=env)
    assert added.returncode == 0, added.stderr
    processes.start("dispatch", env=env)
    wait_until(lambda: log.exists() and "start t" in log.read_text(), timeout=30)
    # When it is cancelled
    result = bridge("cancel", "t", env=env)
    assert result.returncode == 0, result.stderr
    # Then the handler is stopped all the same (within a heartbeat), never reaching its end
    time.sleep(12)
    assert "end t" not in log.read_text(), processes.logs()
    assert bridge_json("show", "t", env=env)["status"] == "cancelled"
    client.close()
