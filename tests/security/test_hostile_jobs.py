"""Anyone who can write to Redis must not get code run by ``bridge worker``.

Each hostile job is placed on the bridge queue the way an attacker would (RQ's own
``enqueue``, or raw Redis commands), then a real ``bridge worker --burst`` drains the
queue. Nothing of any hostile job may run: no function it names, no callback, no
import; each is refused in the log and marked failed in RQ's failed registry.
"""

import json
import zlib
from pathlib import Path

import pytest
import redis
from helpers import bridge
from rq import Callback, Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from bridge.messages import JOB_FUNCTION, Dispatch

MODES = ["fork", "simple"]


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


def drain(env: dict, mode: str):
    return bridge("worker", "--burst", env={**env, "BRIDGE_WORKER_CLASS": mode}, timeout=60)


def failed_ids(client) -> set[str]:
    return set(FailedJobRegistry("bridge", connection=client).get_job_ids())


def bridge_kwargs(job_id: str) -> dict:
    return Dispatch("t", 1, job_id, "noop", None, None, "bridge", "0123456789ab").encode()


@pytest.mark.parametrize("mode", MODES)
def test_a_job_naming_any_function_is_refused_unrun(attack, mode):
    # Given jobs that name os.system and a test function, enqueued with RQ as anyone could
    client, env, marker = attack
    queue = Queue("bridge", connection=client, serializer=JSONSerializer)
    system = queue.enqueue("os.system", f"touch {marker}")
    touch = queue.enqueue("security.hostile.touch")
    # When a bridge worker drains the queue
    result = drain(env, mode)
    # Then neither ran, both are refused in the log and failed in RQ's registry
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert result.stderr.count("refused job") == 2, result.stderr
    assert "not bridge's entry point" in result.stderr
    assert {system.id, touch.id} <= failed_ids(client)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hook", ["on_success", "on_failure", "on_stopped"])
def test_a_bridge_job_with_a_callback_is_refused_and_the_callback_never_runs(attack, mode, hook):
    # Given a job that names bridge's own entry point but carries a callback
    client, env, marker = attack
    queue = Queue("bridge", connection=client, serializer=JSONSerializer)
    job = queue.enqueue(
        JOB_FUNCTION,
        job_id="bridge-t-0123456789ab-t1",
        kwargs=bridge_kwargs("bridge-t-0123456789ab-t1"),
        **{hook: Callback("security.hostile.touch")},
    )
    # When a bridge worker drains the queue
    result = drain(env, mode)
    # Then the callback never ran, and the job was refused
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert "refused job" in result.stderr and "callbacks" in result.stderr
    assert job.id in failed_ids(client)


@pytest.mark.parametrize("mode", MODES)
def test_jobs_written_with_raw_redis_commands_are_refused(attack, mode):
    # Given two jobs written with plain Redis commands: JSON naming os.system, and a pickle
    client, env, marker = attack
    for job_id, data in [
        (
            "evil-json",
            zlib.compress(json.dumps(["os.system", None, [f"touch {marker}"], {}]).encode()),
        ),
        ("evil-pickle", b"\x80\x04\x95garbage that is not JSON"),
    ]:
        client.hset(
            Job.key_for(job_id),
            mapping={"data": data, "status": "queued", "origin": "bridge", "created_at": ""},
        )
        client.rpush("rq:queue:bridge", job_id)
    # When a bridge worker drains the queue
    result = drain(env, mode)
    # Then nothing ran, both were refused, and the worker itself carried on to the end
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert result.stderr.count("refused job") == 2, result.stderr
    assert {"evil-json", "evil-pickle"} <= failed_ids(client)


@pytest.mark.parametrize("mode", MODES)
def test_a_zlib_bomb_is_refused_before_it_is_inflated(attack, mode):
    # Given a record of about 200 KB of zlib that would inflate to 200 MB, then a job of
    # bridge's own behind it
    client, env, _ = attack
    inflater = zlib.compressobj(9)
    bomb = inflater.compress(b"[" + b" " * (200 * 1024 * 1024)) + inflater.flush()
    assert len(bomb) < 1024 * 1024
    client.hset(
        Job.key_for("bomb"),
        mapping={"data": bomb, "status": "queued", "origin": "bridge", "created_at": ""},
    )
    client.rpush("rq:queue:bridge", "bomb")
    # When a bridge worker drains the queue
    result = drain(env, mode)
    # Then the record is refused for its size, and the worker went on to the end
    assert result.returncode == 0, result.stderr
    assert "refused job bomb" in result.stderr, result.stderr
    assert "inflates to more than" in result.stderr
    assert "bomb" in failed_ids(client)


@pytest.mark.parametrize("mode", MODES)
def test_a_bridge_job_with_extra_or_wrong_fields_is_refused(attack, mode):
    client, env, marker = attack
    queue = Queue("bridge", connection=client, serializer=JSONSerializer)
    fields = {**bridge_kwargs("bridge-t-0123456789ab-t2"), "kind": {"not": "a string"}}
    job = queue.enqueue(JOB_FUNCTION, job_id="bridge-t-0123456789ab-t2", kwargs=fields)
    result = drain(env, mode)
    assert result.returncode == 0, result.stderr
    assert "refused job" in result.stderr and "wrong type" in result.stderr
    assert job.id in failed_ids(client)


@pytest.mark.parametrize("mode", MODES)
def test_a_bridge_job_naming_rq_dependencies_is_refused(attack, mode):
    # Given a job of bridge's own entry point whose record names RQ dependencies, put on
    # the queue directly (RQ itself would defer it until they finish)
    client, env, _ = attack
    job_id = "bridge-t-0123456789ab-t3"
    queue = Queue("bridge", connection=client, serializer=JSONSerializer)
    job = queue.create_job(JOB_FUNCTION, job_id=job_id, kwargs=bridge_kwargs(job_id))
    job._dependency_ids = ["some-other-job"]
    job.save()
    client.rpush("rq:queue:bridge", job_id)
    # When a bridge worker drains the queue
    result = drain(env, mode)
    # Then it is refused for its dependencies, not run
    assert result.returncode == 0, result.stderr
    assert "refused job" in result.stderr and "RQ dependencies" in result.stderr
    assert job_id in failed_ids(client)
