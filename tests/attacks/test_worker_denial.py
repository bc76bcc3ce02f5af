"""One entry written to RQ's bookkeeping must not stop a bridge worker.

A bridge worker refuses every job it does not recognise, but RQ's periodic
maintenance (run at start-up and every ten minutes) reads job records from its
registries and its intermediate list on its own. A record that RQ cannot parse
must be set aside like any refused job; today it escapes RQ's loop, which logs
"found an unhandled exception, quitting" and returns: ``bridge worker`` exits 0,
and every worker started later on the queue exits the same way.

The last test is a regression test for an attack that fails today: a record in
RQ's started registry with a failure callback is swept without running it.
"""

import json
import time
import zlib
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry

MODES = ["fork", "simple"]

UNPARSABLE = {
    # JSON naming a harmless function, and a status RQ does not know: Job.restore raises.
    "data": zlib.compress(json.dumps(["os.getcwd", None, [], {}]).encode()),
    "status": "bogus",
    "origin": "bridge",
    "created_at": "",
}


@pytest.fixture
def attack(tmp_path: Path, redis_server, bridge_env):
    marker = tmp_path / "pwned"
    env = {
        **bridge_env,
        "HOSTILE_MARKER": str(marker),
        "PYTHONPATH": bridge_env["PYTHONPATH"] + ":" + str(Path(__file__).parents[1]),
    }
    client = redis.Redis.from_url(redis_server.url)
    yield client, env, marker
    client.close()


def still_serving(processes, env: dict, mode: str, seconds: float = 4.0) -> bool:
    worker = processes.start("worker", env={**env, "BRIDGE_WORKER_CLASS": mode})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("mode", MODES)
def test_an_unparsable_record_in_rqs_started_registry_does_not_stop_the_worker(
    attack, processes, mode
):
    # Given a record RQ cannot parse, listed as abandoned in RQ's started registry
    client, env, _marker = attack
    client.hset(Job.key_for("evil"), mapping=UNPARSABLE)
    client.zadd("rq:wip:bridge", {"evil": 1})
    # When a (non-burst) bridge worker starts and runs RQ's start-up maintenance
    # Then it keeps serving the queue
    assert still_serving(processes, env, mode), processes.logs()


@pytest.mark.parametrize("mode", MODES)
def test_an_unparsable_record_in_rqs_intermediate_list_does_not_stop_the_worker(
    attack, processes, mode
):
    # Given a record RQ cannot parse, left in the queue's intermediate list
    client, env, _marker = attack
    client.hset(Job.key_for("evil"), mapping=UNPARSABLE)
    client.rpush("rq:queue:bridge:intermediate", "evil")
    # When a bridge worker starts
    # Then it keeps serving the queue
    assert still_serving(processes, env, mode), processes.logs()


@pytest.mark.parametrize("mode", MODES)
def test_an_abandoned_record_with_a_failure_callback_is_swept_without_running_it(
    attack, processes, mode
):
    # Given a record in RQ's started registry, "abandoned", carrying a failure callback
    client, env, marker = attack
    client.hset(
        Job.key_for("evil-cb"),
        mapping={
            **UNPARSABLE,
            "status": "started",
            "failure_callback_name": "security.hostile.touch",
            "stopped_callback_name": "security.hostile.touch",
            "success_callback_name": "security.hostile.touch",
        },
    )
    client.zadd("rq:wip:bridge", {"evil-cb": 1})
    # When a bridge worker starts and RQ's maintenance sweeps the registry
    assert still_serving(processes, env, mode), processes.logs()
    # Then the callback never ran, and the record is failed in RQ's registry
    assert not marker.exists()
    assert "evil-cb" in FailedJobRegistry("bridge", connection=client).get_job_ids()
