"""Worker faults: SIGKILL mid-task (the whole worker, or only its work-horse), SIGTERM of
everything with a restart, and cancelling a running or a queued task."""

import os
import signal
import time
from pathlib import Path

from faultlib import (
    Fleet,
    add_graph,
    alive,
    children,
    epoch,
    events,
    graph_from,
    kill_group,
    log_pids,
    outcome,
    record_task,
    redis_client,
    reports_stream,
    tasks,
)
from helpers import statuses, wait_until
from rq import Queue

DETECTION_LIMIT = 13.0
"""README: a dead worker is detected "within about 11 s" (heartbeat TTL 10 s, checks each 1 s)."""


def _worker_lost_at(db_path, task_id: str) -> float | None:
    for event in events(db_path, task_id):
        if "WorkerLost" in (event["detail"] or ""):
            return epoch(event["at"])
    return None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_worker_killed_mid_task(tmp_path, fault_env, db_path, processes, fault_table):
    # Given four slow tasks running on four forking workers, two of them with a second
    # attempt allowed, and a task that waits for those two
    log = tmp_path / "runs.log"
    graph = [
        record_task(f"{mode}-{policy}", log, kind="slow_first", sleep=8, max_attempts=attempts)
        for mode in ("tree", "horse")
        for policy, attempts in (("retried", 2), ("failed", 1))
    ]
    graph.append(record_task("after", log, deps=["tree-retried", "horse-retried"]))
    slow = [spec["id"] for spec in graph[:4]]
    expected = {"tree-failed": "failed", "horse-failed": "failed"}
    add_graph(tmp_path, fault_env, graph)
    fleet = Fleet(processes, fault_env)
    fleet.start("dispatch")
    workers = {w.pid: w for w in (fleet.start("worker", "--quiet") for _ in range(4))}

    def all_running() -> bool:
        states = statuses(db_path)
        return all(states[t] == "working" and len(log_pids(log, t)) == 1 for t in slow)

    wait_until(all_running, timeout=30, every=0.05)
    horses = {t: log_pids(log, t)[0] for t in slow}
    owner = {t: workers[_parent(h)] for t, h in horses.items()}
    assert sorted(h for w in workers for h in children(w)) == sorted(horses.values())
    # When, mid-task, the "tree-" tasks lose their whole worker (the worker's process
    # group and the work-horse's: RQ gives each horse a group of its own with
    # os.setpgrp, so killpg of the worker alone would leave the horse running), and the
    # "horse-" tasks only their work-horse (what the OOM killer picks), all with SIGKILL
    groups = [owner[t].pid for t in slow if t.startswith("tree-")]
    groups += [os.getpgid(horses[t]) for t in slow if t.startswith("tree-")]
    killed_at = time.time()
    for task_id in slow:
        if task_id.startswith("tree-"):
            fleet.forget(owner[task_id])
    for group in groups:
        kill_group(group)
    for task_id in slow:
        if task_id.startswith("horse-"):
            os.kill(horses[task_id], signal.SIGKILL)
    wait_until(lambda: not any(alive(h) for h in horses.values()), timeout=5)
    # Then the dispatcher notices that each one's worker is lost
    wait_until(lambda: all(_worker_lost_at(db_path, t) for t in slow), timeout=DETECTION_LIMIT + 10)
    detection = {t: _worker_lost_at(db_path, t) - killed_at for t in slow}
    # And the tasks with attempts left run again (on the surviving workers) and are
    # done, the others failed
    try:
        fleet.wait_done(db_path, timeout=30, expected=expected)
    finally:
        result = outcome(db_path, log, graph, expected=expected)
        for mode in ("tree", "horse"):
            fault_table.add(
                f"3 worker SIGKILL ({'worker+horse' if mode == 'tree' else 'horse only'})",
                tasks=result.tasks,
                faults=2,
                lost=result.lost,
                repeated=result.repeated,
                recover=max(v for t, v in detection.items() if t.startswith(mode)),
                note="kill -> WorkerLost recorded (max of 2 tasks); one run shares 5 tasks",
            )
    assert result.lost == 0, processes.logs()
    for mode in ("tree", "horse"):
        retried, failed = result.final[f"{mode}-retried"], result.final[f"{mode}-failed"]
        assert retried["attempts"] == 2 and result.counts[f"{mode}-retried"] == 2
        assert failed["attempts"] == 1 and result.counts[f"{mode}-failed"] == 1
        assert "WorkerLost" in failed["error"]
    assert result.counts["after"] == 1
    assert max(detection.values()) <= DETECTION_LIMIT, detection
    # And the workers whose work-horse alone was killed survived
    assert fleet.all_alive(), processes.logs()


def _reports_in_stream(url: str) -> dict[str, list[str]]:
    """The reports still waiting in the stream, by task: kinds in order."""
    found: dict[str, list[str]] = {}
    client = redis_client(url)
    for _, fields in client.xrange(reports_stream(client)):
        if b"task_id" in fields:
            found.setdefault(fields[b"task_id"].decode(), []).append(fields[b"kind"].decode())
    return found


def _stop_all_while_a_job_is_picked(dispatcher, workers, client, tries: int = 50) -> list[str]:
    """SIGTERM everything at a moment an idle worker has been handed a job but has not
    begun it: the job is in RQ's intermediate list, not yet in the started registry.

    The workers are frozen with SIGSTOP while one of them waits in BLMOVE; Redis then
    hands the next job the dispatcher sends to that worker, which cannot start it
    until it gets SIGTERM and SIGCONT. Returns the ids of the jobs picked, not started.
    """
    queue = Queue("bridge", connection=client)

    def blocked() -> bool:
        return any(c.get("cmd") == "blmove" and "b" in c["flags"] for c in client.client_list())

    def picked() -> list[str]:
        started = {  # members are "<job id>:<execution id>"
            m.decode().split(":")[0] for m in client.zrange(queue.started_job_registry.key, 0, -1)
        }
        waiting = client.lrange(queue.intermediate_queue_key, 0, -1)
        return [j.decode() for j in waiting if j.decode() not in started]

    for _ in range(tries):
        for worker in workers:
            os.kill(worker.pid, signal.SIGSTOP)
        found: list[str] = []
        if blocked():
            deadline = time.monotonic() + 5
            while not found and time.monotonic() < deadline:
                found = picked()
                time.sleep(0.005)
        if found:
            for process in [dispatcher, *workers]:
                process.send_signal(signal.SIGTERM)
        for worker in workers:
            os.kill(worker.pid, signal.SIGCONT)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no idle worker was handed a job in {tries} tries")


def test_sigterm_everything_then_restart(
    tmp_path, fault_env, db_path, redis_server, processes, fault_table
):
    # Given a 60-task graph half way through on three forking workers and two slots,
    # one of them held by a slow task
    log = tmp_path / "runs.log"
    graph = graph_from(log, size=60, sleep=0.15)
    graph.append(record_task("slow", log, sleep=2.5, deps=["chain0-1"], priority=100))
    env = {**fault_env, "BRIDGE_SLOTS": "2"}  # three workers: one of them always idle
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    dispatcher = fleet.start("dispatch")
    workers = [fleet.start("worker", "--quiet") for _ in range(3)]

    def midway() -> bool:
        states = statuses(db_path)
        return states["slow"] == "working" and list(states.values()).count("done") >= 8

    wait_until(midway, timeout=60, every=0.02)
    # When everything gets SIGTERM at once, at a moment a worker runs the slow task and
    # another one has just been handed a job it has not begun
    client = redis_client(redis_server.url)
    stopped_at = time.time()
    for process in [dispatcher, *workers]:
        fleet.forget(process)
    picked = _stop_all_while_a_job_is_picked(dispatcher, workers, client)
    # Then the dispatcher exits 0 and the workers finish their current task and exit 0
    assert dispatcher.wait(timeout=15) == 0, processes.logs()
    assert [w.wait(timeout=15) for w in workers] == [0, 0, 0], processes.logs()
    stop_seconds = time.time() - stopped_at
    before = statuses(db_path)
    done_before = {t for t, s in before.items() if s == "done"}
    running = {t for t, s in before.items() if s == "working"}
    reports = _reports_in_stream(redis_server.url)
    assert "slow" in running, "the slow task was not running at the stop"
    for task_id in running:  # finished after the dispatcher left: its report waits in Redis
        assert reports.get(task_id, [])[-1:] == ["succeeded"], (task_id, reports)
    # When everything starts again
    restarted_at = time.monotonic()
    fleet.start("dispatch")
    for _ in range(3):
        fleet.start("worker", "--quiet")
    wait_until(lambda: all(statuses(db_path)[t] == "done" for t in running), timeout=15)
    recover = time.monotonic() - restarted_at
    # Then the graph finishes (its few seconds of work plus the lost-job grace), nothing
    # ran twice, and tasks done before the stop did not run again
    try:
        fleet.wait_done(db_path, timeout=15)
    finally:
        result = outcome(db_path, log, graph)
        fault_table.add(
            "6 SIGTERM all + restart",
            tasks=result.tasks,
            faults=4,
            lost=result.lost,
            repeated=result.repeated,
            recover=recover,
            note=f"restart -> tasks running at the stop done; stop took {stop_seconds:.1f}s;"
            f" {len(picked)} job(s) picked not started at the stop",
        )
    assert result.lost == 0, processes.logs()
    assert all(result.counts[t] == 1 for t in done_before | running)
    assert result.repeated == 0, [t for t, n in result.counts.items() if n > 1]
    assert all(tasks(db_path)[t]["attempts"] == 1 for t in running)


def test_cancel_running_and_queued_tasks(
    tmp_path, fault_env, db_path, redis_server, processes, fault_table
):
    # Given one forking worker busy with a long task, a second task queued in Redis
    # behind it, and a third waiting in the database for a slot
    log = tmp_path / "runs.log"
    graph = [
        record_task("long", log, sleep=60, priority=10),
        record_task("queued", log, priority=5),
        record_task("follow", log),
    ]
    env = {**fault_env, "BRIDGE_SLOTS": "2"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    fleet.start("dispatch")
    fleet.start("worker", "--quiet")
    wait_until(
        lambda: (
            statuses(db_path) == {"long": "working", "queued": "queued", "follow": "available"}
            and len(log_pids(log, "long")) == 1
        ),
        timeout=30,
    )
    client = redis_client(redis_server.url)
    job_id = tasks(db_path)["queued"]["job_id"]
    assert job_id.encode() in client.lrange("rq:queue:bridge", 0, -1)
    # When the queued task is cancelled
    from helpers import bridge

    cancelled = bridge("cancel", "queued", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    # Then its job is gone from Redis's queue, and it is recorded cancelled
    assert not client.exists(f"rq:job:{job_id}") or job_id.encode() not in client.lrange(
        "rq:queue:bridge", 0, -1
    )
    assert statuses(db_path)["queued"] == "cancelled"
    # When the running task is cancelled
    horse = log_pids(log, "long")[0]
    assert alive(horse)
    cancel_at = time.monotonic()
    cancelled = bridge("cancel", "long", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    # Then its work-horse is stopped, and the worker is free for the next task at once
    wait_until(lambda: not alive(horse), timeout=10)
    stopped = time.monotonic() - cancel_at
    expected = {"long": "cancelled", "queued": "cancelled"}
    try:
        fleet.wait_done(db_path, timeout=15, expected=expected)
    finally:
        result = outcome(db_path, log, graph, expected=expected, not_run=["queued"])
        fault_table.add(
            "8 cancel running + queued",
            tasks=result.tasks,
            faults=2,
            lost=result.lost,
            repeated=result.repeated,
            recover=stopped,
            note="cancel -> running work-horse gone",
        )
    assert result.lost == 0, processes.logs()
    assert result.counts == {"long": 1, "follow": 1}  # the queued task never ran
    assert time.monotonic() - cancel_at < 15  # not after the 60 s the handler wanted
    # And nothing the stopped job might still send changes the cancelled state
    time.sleep(1.0)
    assert statuses(db_path) == {"long": "cancelled", "queued": "cancelled", "follow": "done"}
