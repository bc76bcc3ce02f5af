"""One field written to a job's record in Redis must not stop the dispatcher.

The dispatcher reads RQ's ``started_at``/``ended_at`` of every job in flight and
parses them; a value that is not a date raises ``ValueError``, which its loop
(retrying only Redis and database errors) does not catch. The dispatcher exits
with a traceback, and every restart dies the same way at its first reconcile,
for as long as the record stays (a waiting job's record has no expiry). The
README: the dispatcher "exits only on SIGTERM/SIGINT".
"""

import time

import pytest
import redis
from helpers import bridge, query, wait_until


@pytest.mark.parametrize("field", ["started_at", "ended_at"])
def test_an_unreadable_date_in_a_job_record_does_not_stop_the_dispatcher(
    db_path, redis_server, bridge_env, processes, field
):
    # Given a task dispatched, its job waiting on the queue (no worker yet)
    added = bridge("add", "t", "--kind", "noop", env=bridge_env)
    assert added.returncode == 0, added.stderr
    dispatcher = processes.start("dispatch", env=bridge_env)
    wait_until(lambda: query(db_path, "SELECT job_id FROM tasks")[0][0] is not None, timeout=30)
    (job_id,) = query(db_path, "SELECT job_id FROM tasks")[0]
    # When someone who can write to Redis puts a non-date in the job's record
    client = redis.Redis.from_url(redis_server.url)
    client.hset(f"rq:job:{job_id}", field, "not a date")
    client.close()
    time.sleep(4)  # a few reconciliations
    # Then the dispatcher is still running, and a worker still gets the task done
    assert dispatcher.poll() is None, processes.logs()
    processes.start("worker", env=bridge_env)
    wait_until(lambda: query(db_path, "SELECT status FROM tasks")[0][0] == "done", timeout=60)
