"""A copy of a database file is a second database, and must be kept apart in Redis.

The Redis namespace and the fencing tokens both come from the database's
``bridge_meta`` rows, so ``cp bridge.db staging.db`` gives two databases the same
namespace and the same next token. Their dispatchers then share one report stream
(and one consumer), neither refuses the other on a shared queue, and tasks of the
same id get the same job id: one database's job overwrites the other's, and a
report lands in whichever database reads it first.
"""

import json
import shutil
import time

from helpers import bridge, query, wait_until


def test_a_copied_database_does_not_share_jobs_or_reports_with_its_original(
    tmp_path, db_path, bridge_env, processes
):
    # Given a database, and a copy of it made before anything was dispatched
    assert bridge("add", "seed", env=bridge_env).returncode == 0
    copy_path = tmp_path / "copy.db"
    shutil.copy(db_path, copy_path)
    copy_env = {**bridge_env, "BRIDGE_DATABASE_URL": f"sqlite:///{copy_path}"}
    # And in each, tasks of the same ids with different payloads
    ids = [f"x{n}" for n in range(6)]
    for env, which in ((bridge_env, "original"), (copy_env, "copy")):
        for task_id in ids:
            payload = json.dumps({"db": which})
            result = bridge("add", task_id, "--kind", "echo", "--payload", payload, env=env)
            assert result.returncode == 0, result.stderr
    # When both databases are dispatched on the default queue, with one worker
    processes.start("dispatch", env=bridge_env)
    time.sleep(1)
    second = processes.start("dispatch", env=copy_env)
    processes.start("worker", env=bridge_env)
    time.sleep(3)
    if second.poll() is not None:
        # Then either the copy's dispatcher is refused, in one line...
        log = processes.logs()
        assert second.returncode != 0 and "error:" in log and "Traceback" not in log, log
        return

    # ...or each database gets its own tasks done, with its own payloads
    def done(path) -> bool:
        rows = query(path, "SELECT status FROM tasks")
        return all(status == "done" for (status,) in rows)

    wait_until(lambda: done(db_path) and done(copy_path), timeout=30)
    for path, which in ((db_path, "original"), (copy_path, "copy")):
        outputs = dict(query(path, "SELECT id, output FROM tasks WHERE id LIKE 'x%'"))
        assert {json.loads(v)["db"] for v in outputs.values()} == {which}, (which, outputs)
