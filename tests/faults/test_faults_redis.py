"""Redis faults: a crash and restart that loses everything, a FLUSHALL, a password."""

import time
from collections import Counter

import pytest
from faultlib import (
    Fleet,
    add_graph,
    bridge_all,
    epoch,
    events,
    graph_from,
    outcome,
    record_task,
    redis_client,
)
from helpers import statuses, wait_until

WORKERS = 3


def _midway(db_path, done: int, processes) -> None:
    """Until ``done`` tasks are done and at least two are running."""
    seen: list = []

    def ready() -> bool:
        states = list(statuses(db_path).values())
        seen[:] = [Counter(states)]
        return states.count("done") >= done and states.count("working") >= 2

    try:
        wait_until(ready, timeout=30, every=0.02)
    except AssertionError:
        raise AssertionError(f"never midway: {seen}\n{processes.logs()}") from None


def _first_redispatch(db_path, since: float) -> float | None:
    """Seconds from ``since`` to the first re-dispatch of an in-flight task (a new attempt)."""
    for event in events(db_path):
        at = epoch(event["at"])
        if at >= since and event["from"] in ("queued", "working") and event["to"] == "queued":
            return at - since
    return None


SUPERVISION = pytest.mark.parametrize(
    "supervised",
    [
        pytest.param(False, id="processes-ride-it-out"),
        pytest.param(True, id="supervisor-restarts-processes"),
    ],
)
"""Each Redis fault twice: the same processes must survive it, and restarted ones too."""


def _graph_midway(tmp_path, env, db_path, fleet):
    log = tmp_path / "runs.log"
    graph = graph_from(log, size=60, sleep=0.15)
    add_graph(tmp_path, env, graph)
    fleet.start("dispatch")
    for _ in range(WORKERS):
        fleet.start("worker", "--quiet")
    _midway(db_path, 15, fleet.processes)
    return log, graph


@SUPERVISION
def test_redis_crash_and_restart_mid_graph(
    supervised, tmp_path, fault_env, db_path, redis_server, processes, fault_table
):
    # Given a 60-task graph half way through, with tasks in flight
    env = {**fault_env, "BRIDGE_SLOTS": "6"}
    fleet = Fleet(processes, env)
    log, graph = _graph_midway(tmp_path, env, db_path, fleet)
    # When Redis dies (SIGKILL, no persistence) and comes back empty on the same port
    fault_at = time.time()
    redis_server.kill()
    time.sleep(1.0)
    redis_server.restart()
    # Then the graph finishes (with the same processes, or restarted ones if supervised)
    try:
        fleet.wait_done(db_path, timeout=60, supervise=supervised)
    finally:
        result = outcome(db_path, log, graph)
        recover = _first_redispatch(db_path, fault_at)
        fault_table.add(
            f"1 redis SIGKILL+restart ({'supervised' if supervised else 'unsupervised'})",
            tasks=result.tasks,
            faults=1,
            lost=result.lost,
            repeated=result.repeated,
            recover=recover,
            note=f"crash -> first lost job sent again; {fleet.restarts} process restart(s)",
        )
    # And no task is lost: every one is done and its handler ran
    assert result.lost == 0, processes.logs()
    # And the jobs in flight at the crash were sent again
    assert recover is not None, processes.logs()


def _flush_while_dispatcher_waits(url: str) -> bool:
    """FLUSHALL at a moment the dispatcher is blocked reading reports (its usual state).

    CLIENT LIST and FLUSHALL go in one pipeline, which Redis runs back to back, so
    the listing shows the state the flush hit. Returns whether the dispatcher was blocked.
    """
    client = redis_client(url)

    def dispatcher_blocked(listing) -> bool:
        return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in listing)

    wait_until(lambda: dispatcher_blocked(client.client_list()), timeout=10, every=0.01)
    with client.pipeline(transaction=False) as pipe:
        pipe.client_list()
        pipe.flushall()
        listing, _ = pipe.execute()
    return dispatcher_blocked(listing)


@SUPERVISION
def test_flushall_mid_graph(
    supervised, tmp_path, fault_env, db_path, redis_server, processes, fault_table
):
    # Given a 60-task graph half way through, with tasks in flight
    env = {**fault_env, "BRIDGE_SLOTS": "6"}
    fleet = Fleet(processes, env)
    log, graph = _graph_midway(tmp_path, env, db_path, fleet)
    # When someone runs FLUSHALL: every job, report and heartbeat is gone
    fault_at = time.time()
    assert _flush_while_dispatcher_waits(redis_server.url)
    # Then the graph finishes (with the same processes, or restarted ones if supervised)
    try:
        fleet.wait_done(db_path, timeout=60, supervise=supervised)
    finally:
        result = outcome(db_path, log, graph)
        recover = _first_redispatch(db_path, fault_at)
        fault_table.add(
            f"2 redis FLUSHALL ({'supervised' if supervised else 'unsupervised'})",
            tasks=result.tasks,
            faults=1,
            lost=result.lost,
            repeated=result.repeated,
            recover=recover,
            note=f"flush -> first lost job sent again; {fleet.restarts} process restart(s)",
        )
    # And no task is lost: every one is done and its handler ran
    assert result.lost == 0, processes.logs()
    # And the jobs in flight at the flush were sent again
    assert recover is not None, processes.logs()


PASSWORD = "Pw-s3cr3t-7Hq9zK"
WRONG = "Wrong-pw-4Xm2vB"


def test_redis_with_a_password(tmp_path, fault_env, db_path, redis_server, processes, fault_table):
    # Given a Redis that requires a password, and bridge given it in the URL
    redis_client(redis_server.url).config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    env = {**fault_env, "BRIDGE_REDIS_URL": url}
    log = tmp_path / "runs.log"
    graph = [record_task(f"t{n}", log, deps=[f"t{n - 1}"] if n else []) for n in range(5)]
    graph.append(record_task("boom", log, kind="fail"))
    expected = {"boom": "failed"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    fleet.start("-v", "dispatch")  # debug logging: the most it ever prints
    fleet.start("worker")
    # When the graph runs
    try:
        fleet.wait_done(db_path, timeout=30, expected=expected)
    finally:
        result = outcome(db_path, log, graph, expected=expected, not_run=["boom"])
        fault_table.add(
            "10 redis with a password",
            tasks=result.tasks,
            faults=0,
            lost=result.lost,
            repeated=result.repeated,
            recover=None,
            note="redis://:pw@host; password searched in logs and CLI output",
        )
    # Then it works, and the password shows nowhere
    assert result.lost == 0 and result.repeated == 0, processes.logs()
    *outputs, refused = bridge_all(
        ["--help"],
        ["dispatch", "--help"],
        ["worker", "--help"],
        ["show", "boom"],
        ["events", "boom"],
        ["--redis-url", url.replace(PASSWORD, WRONG), "worker", "--burst"],
        env=env,
    )
    # And a wrong password fails with one line that does not show it either
    assert refused.returncode != 0 and "error:" in refused.stderr
    fleet.stop_all()
    texts = [processes.logs(), refused.stdout + refused.stderr]
    texts += [o.stdout + o.stderr for o in outputs]
    texts += [p.read_text(errors="replace") for p in tmp_path.glob("proc-*.log")]
    for text in texts:
        assert PASSWORD not in text and WRONG not in text, text
    assert all(o.returncode == 0 for o in outputs)
