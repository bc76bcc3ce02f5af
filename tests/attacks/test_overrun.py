"""A task that overruns its timeout on a healthy forking worker.

The README: "working 30 s past its ``timeout``: failed with ``TimeoutError``". The
dispatcher's verdict is TimeoutError, but it fences the attempt first, finds the
heartbeat alive and "leaves it alone"; the mark stays, so the worker kills the
horse at its next heartbeat, and the attempt is failed later as ``WorkerLost``
("the process running it died or was killed"), which is not what happened.
"""

import json
import time

from helpers import bridge, query, wait_until


def test_a_task_overrunning_its_timeout_fails_with_timeouterror(db_path, bridge_env, processes):
    # Given a task with a 1 s timeout whose handler ignores RQ's timeout
    env = {
        **bridge_env,
        "BRIDGE_HANDLERS": "test_handlers,attacks.attack_handlers",
        "BRIDGE_WORKER_CLASS": "fork",
    }
    payload = json.dumps({"seconds": 90})
    added = bridge(
        "add", "t", "--kind", "stubborn", "--payload", payload, "--timeout", "1", env=env
    )
    assert added.returncode == 0, added.stderr
    # When it runs on a healthy forking worker, past its timeout and the 30 s margin
    processes.start("dispatch", env=env)
    processes.start("worker", env=env)
    started = time.monotonic()
    wait_until(lambda: query(db_path, "SELECT status FROM tasks")[0][0] == "failed", timeout=70)
    # Then it failed as timed out, not as a lost worker
    (error,) = query(db_path, "SELECT error FROM tasks")[0]
    assert error.startswith("TimeoutError"), (error, time.monotonic() - started)
