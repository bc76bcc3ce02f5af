"""A heartbeat that finds its attempt fenced after the work horse has already ended
must not kill anything else.

The forking worker's watch thread stops the job (``kill_horse``) when its
heartbeat finds the attempt fenced. If the horse ended meanwhile (it died, or it
finished), RQ has set ``horse_pid`` to 0, and RQ's ``kill_horse`` runs
``os.killpg(os.getpgid(0), SIGKILL)``: the worker SIGKILLs its own process group.
Here Redis stalls for three seconds (a slow fork for a snapshot, a network
hiccup) right as a fenced (cancelled) job's horse dies, so the heartbeat's answer
arrives after the horse is gone.
"""

import json
import os
import signal
import subprocess
import time

import redis
from helpers import wait_until
from rq import Queue
from rq.serializers import JSONSerializer

from bridge.broker.keys import Keys
from bridge.messages import JOB_FUNCTION, Dispatch

NAMESPACE = "0123456789ab"
JOB_ID = f"bridge-t-{NAMESPACE}-t1"


def test_a_fence_seen_after_the_horse_died_does_not_kill_the_worker(
    redis_server, bridge_env, processes
):
    # Given a forking worker running a long job, just after a heartbeat
    client = redis.Redis.from_url(redis_server.url)
    keys = Keys(NAMESPACE)
    worker = processes.start("worker", env={**bridge_env, "BRIDGE_WORKER_CLASS": "fork"})
    payload = json.dumps({"seconds": 60})
    fields = Dispatch("t", 1, JOB_ID, "sleep", payload, None, "bridge", NAMESPACE)
    Queue("bridge", connection=client, serializer=JSONSerializer).enqueue(
        JOB_FUNCTION, job_id=JOB_ID, kwargs=fields.encode(), timeout=-1
    )
    wait_until(lambda: client.exists(keys.alive(JOB_ID)), timeout=30)
    time.sleep(1)
    previous = client.pttl(keys.alive(JOB_ID))
    while (left := client.pttl(keys.alive(JOB_ID))) <= previous:
        previous = left
        time.sleep(0.01)
    horse = int(subprocess.check_output(["pgrep", "-P", str(worker.pid)]).split()[0])
    # When the attempt is fenced (cancelled), Redis stalls, and the horse dies meanwhile
    client.set(keys.fence(JOB_ID), "1")
    server = redis_server.pid
    os.kill(server, signal.SIGSTOP)
    try:
        os.kill(horse, signal.SIGKILL)
        time.sleep(3)  # the next heartbeat is sent, and waits for Redis
    finally:
        os.kill(server, signal.SIGCONT)
    time.sleep(3)
    # Then the worker is still alive and serving
    assert worker.poll() is None, f"worker died with {worker.returncode}\n{processes.logs()}"
    client.close()
