"""Cancel decided from what Redis says now, and failures visible where RQ users look."""

import json
import time
from pathlib import Path

import pytest
import redis
from helpers import bridge, bridge_json, wait_until
from rq.job import Job
from rq.registry import FailedJobRegistry


def start_running(tmp_path: Path, env: dict, processes, mode: str, sleep: float) -> Path:
    log = tmp_path / "marks.log"
    payload = json.dumps({"log": str(log), "name": "t", "sleep": sleep})
    assert (
        bridge("add", "t", "--kind", "marked_sleep", "--payload", payload, env=env).returncode == 0
    )
    env = {**env, "BRIDGE_WORKER_CLASS": mode}
    processes.start("dispatch", env=env)
    processes.start("worker", env=env)
    wait_until(lambda: log.exists() and "start t" in log.read_text(), timeout=30)
    wait_until(lambda: bridge_json("show", "t", env=env)["status"] == "working", timeout=30)
    return log


def test_cancel_stops_a_running_job_on_a_forking_worker(tmp_path, bridge_env, processes):
    # Given a task whose handler is running on a forking worker
    log = start_running(tmp_path, bridge_env, processes, "fork", sleep=8)
    # When it is cancelled
    result = bridge("cancel", "t", env=bridge_env)
    # Then the CLI says the worker stops it, and the handler never reaches its end
    assert result.returncode == 0, result.stderr
    assert "is stopping the running job" in result.stdout, result.stdout
    time.sleep(10)
    assert "end t" not in log.read_text(), processes.logs()
    assert bridge_json("show", "t", env=bridge_env)["status"] == "cancelled"


def test_cancel_on_a_simple_worker_says_the_job_runs_to_its_end(tmp_path, bridge_env, processes):
    # Given a task running on a simple worker, which cannot stop a job
    log = start_running(tmp_path, bridge_env, processes, "simple", sleep=8)
    # When it is cancelled
    result = bridge("cancel", "t", env=bridge_env)
    # Then the CLI says so, instead of claiming it was stopped
    assert result.returncode == 0, result.stderr
    assert "cannot stop it" in result.stdout and "ignored" in result.stdout, result.stdout
    # And the run does end, its result ignored: the task stays cancelled
    wait_until(lambda: "end t" in log.read_text(), timeout=30)
    time.sleep(1.5)
    task = bridge_json("show", "t", env=bridge_env)
    assert task["status"] == "cancelled" and task["output"] is None


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_a_failed_task_is_failed_in_rqs_registry_and_named_in_the_log(
    bridge_env, redis_server, processes, mode
):
    # Given a task whose handler fails
    env = {**bridge_env, "BRIDGE_WORKER_CLASS": mode}
    payload = json.dumps({"message": "disk full"})
    assert bridge("add", "bad", "--kind", "fail", "--payload", payload, env=env).returncode == 0
    dispatcher = processes.start("dispatch", env=env)
    processes.start("worker", env=env)
    # When it has run
    wait_until(lambda: bridge_json("show", "bad", env=env)["status"] == "failed", timeout=30)
    job_id = bridge_json("show", "bad", env=env)["job_id"]
    # Then RQ's failed registry holds its job, with the handler's error
    client = redis.Redis.from_url(redis_server.url)
    assert job_id in FailedJobRegistry("bridge", connection=client).get_job_ids()
    job = Job.fetch(job_id, connection=client)
    assert job.get_status() == "failed"
    assert "disk full" in (job.latest_result().exc_string or "")
    # And the dispatcher's log names the failed task at INFO
    processes.stop(dispatcher)
    assert "task 'bad' attempt 1 failed: TaskFailed: disk full" in processes.logs()
