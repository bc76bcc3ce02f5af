"""Database faults on PostgreSQL: dispatchers whose hosts' clocks differ by a minute (DESIGN,
invariant 12), and the server ending every session mid-graph.

The standby runs under Debian's ``faketime -f +60s``: its ``time.time()`` is a minute
ahead of the active dispatcher's. Had the lease been decided by the hosts' clocks (each
dispatcher stamping ``expires_at = its time.time() + 15`` and taking the lease when
``expires_at < its time.time()``), the standby would read the active one's lease, stamped
15 s ahead of the active host's clock, as having lapsed 45 s ago, and take it at its very
first try, every second: both would dispatch, and tasks would run twice.
``test_a_host_clock_a_minute_ahead_would_steal_a_live_lease`` shows that with the store
alone. On PostgreSQL the lease is stamped and judged by the database's own clock, so the
standby waits until the active one really stops renewing (here: it is SIGKILLed).
"""

import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from faultlib import (
    Fleet,
    add_graph,
    children,
    events,
    freeze_and_kill,
    graph_from,
    lease,
    outcome,
    redis_client,
    tasks,
)
from helpers import bridge_json, query, statuses, wait_until

from bridge import store

LEASE_TTL = 15.0
TAKEOVER_LIMIT = LEASE_TTL + 5.0
SKEW = 60.0
SIZE = 300


@pytest.fixture
def backend() -> str:
    """Every test here is about PostgreSQL: ``db_url`` is a throwaway PostgreSQL database."""
    return "postgresql"


SKEWED = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
"""Only the wall clock runs ahead, as on a real host whose clock is off: libfaketime also
shifts CLOCK_MONOTONIC by default, and then a timed ``threading.Event.wait`` (its
``pthread_cond_timedwait``) never returns, which would freeze the standby for reasons no
real host has."""


def faketime_prefix() -> list[str]:
    """``faketime -f +60s``, after checking it really moves Python's clock in a child
    (and that timed waits still return there)."""
    if shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is required in CI (apt-get install faketime)")
        pytest.skip("faketime is not installed (apt-get install faketime)")
    prefix = ["faketime", "-f", f"+{SKEW:g}s"]
    shown = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            "import threading, time; threading.Event().wait(0.01); print(time.time())",
        ],
        env={**os.environ, **SKEWED},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ahead = float(shown.stdout) - time.time()
    assert SKEW - 5 < ahead < SKEW + 5, f"faketime moved the child's clock by {ahead:.1f}s"
    return prefix


def holder_pid(db_url: str) -> int | None:
    """The pid in the lease holder's name, whatever its expiry (the database judges that)."""
    held = lease(db_url)
    return None if held is None else int(held[0].split(":")[-2])


def test_a_host_clock_a_minute_ahead_would_steal_a_live_lease(db_url):
    # The failure mode the database clock prevents, with the store alone: A takes the
    # lease for 15 s; B, stamping with a host clock a minute ahead, takes it at once.
    engine = store.open_engine(db_url)
    try:
        with store.writing(engine) as session:
            assert store.acquire_lease(session=session, name="d", holder="A", ttl=LEASE_TTL)
        with store.writing(engine) as session:  # the database's clock: refused
            assert not store.acquire_lease(session=session, name="d", holder="B", ttl=LEASE_TTL)
        with store.writing(engine) as session:  # a host's clock a minute ahead: stolen
            assert store.acquire_lease(
                session=session, name="d", holder="B", ttl=LEASE_TTL, clock=time.time() + SKEW
            )
    finally:
        engine.dispose()


def test_standby_a_minute_ahead_never_steals_and_takes_over_once_when_killed(
    tmp_path, fault_env, db_url, redis_server, processes, fault_table
):
    prefix = faketime_prefix()
    # Given a 300-task graph of 100 ms tasks, the active dispatcher on this host's clock
    log = tmp_path / "runs.log"
    graph = graph_from(log, size=SIZE, sleep=0.1)
    env = {**fault_env, "BRIDGE_SLOTS": "6", "BRIDGE_WORKER_CLASS": "simple"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    active = fleet.start("dispatch")
    wait_until(lambda: holder_pid(db_url) == active.pid, timeout=15)
    # and a standby whose clock runs a minute ahead, and two workers
    skewed = {**env, **SKEWED}
    standby = processes.start("dispatch", env=skewed, prefix=prefix)
    fleet.members.append((("dispatch",), skewed, standby))
    for _ in range(2):
        fleet.start("worker", "--quiet")

    # Then ``bridge status``, from either clock, sees the active one with its time left
    for shown in (
        bridge_json("status", env=env),
        bridge_json_under(prefix, "status", env=skewed),
    ):
        (held,) = shown["dispatchers"]
        assert held["holder"].split(":")[-2] == str(active.pid) and held["live"], shown
        assert 0 < held["expires_in"] <= LEASE_TTL, shown
    # and the active one keeps the lease while the graph runs: the standby, which tries
    # every second, never takes it (without the database's clock it would at its first try)
    holders: set[int | None] = set()
    watched = time.monotonic()

    def sample() -> bool:
        holders.add(holder_pid(db_url))
        done = list(statuses(db_url).values()).count("done")
        return done >= SIZE // 10 and time.monotonic() - watched > 3.0

    wait_until(sample, timeout=60, every=0.05)
    assert holders == {active.pid}, holders
    assert standby.poll() is None, processes.logs()
    # When the active one is SIGKILLed mid-graph (holding no unacknowledged report)
    fleet.forget(active)
    freeze_and_kill(active, redis_client(redis_server.url), holding=False, rnd=random.Random())
    killed_at = time.monotonic()
    left = sum(1 for s in statuses(db_url).values() if s != "done")
    assert left > 0, "the graph finished before the kill"
    # Then the standby takes over when the lease really lapses, not earlier
    # (``faketime`` forks: the standby dispatcher is its child)
    wait_until(lambda: holder_pid(db_url) in children(standby.pid), timeout=TAKEOVER_LIMIT + 5)
    takeover = time.monotonic() - killed_at
    # and ``bridge status`` says since when, on the database's clock (not the standby's)
    (held,) = bridge_json("status", env=env)["dispatchers"]
    since = datetime.strptime(held["since"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    assert abs(since.timestamp() - time.time()) < TAKEOVER_LIMIT + 5, held
    # And the graph finishes with every task run exactly once
    try:
        fleet.wait_done(db_url, timeout=90)
    finally:
        result = outcome(db_url, log, graph)
        fault_table.add(
            "PG clocks 60 s apart, kill active",
            tasks=result.tasks,
            faults=1,
            lost=result.lost,
            repeated=result.repeated,
            recover=takeover,
            note=f"kill -> standby (+{SKEW:g}s clock) holds the lease; {left} unfinished at kill",
        )
    assert result.lost == 0, processes.logs()
    assert result.repeated == 0, {n: c for n, c in result.counts.items() if c > 1}
    assert set(result.counts.values()) == {1}
    assert 0.5 * LEASE_TTL < takeover <= TAKEOVER_LIMIT, f"takeover after {takeover:.1f}s"
    sent = [e for e in events(db_url) if e["to"] == "queued"]
    resent = len(sent) - len({e["task_id"] for e in sent})
    final = tasks(db_url)
    assert resent == sum(row["attempts"] - 1 for row in final.values()), resent


def bridge_json_under(prefix: list[str], *args: str, env: dict[str, str]):
    import json

    result = subprocess.run(
        [*prefix, sys.executable, "-m", "bridge", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def terminate_sessions(db_url: str) -> int:
    """End every other session on the test database (as a server restart or a failover
    would); returns how many there were."""
    rows = query(
        db_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


def test_dispatcher_rides_out_its_database_connections_being_killed(
    tmp_path, fault_env, db_url, processes, fault_table
):
    # Given a 150-task graph running with one dispatcher and two workers on PostgreSQL
    log = tmp_path / "runs.log"
    graph = graph_from(log, size=150, sleep=0.03)
    env = {**fault_env, "BRIDGE_SLOTS": "6", "BRIDGE_WORKER_CLASS": "simple"}
    add_graph(tmp_path, env, graph)
    fleet = Fleet(processes, env)
    fleet.start("dispatch")
    for _ in range(2):
        fleet.start("worker", "--quiet")
    wait_until(lambda: list(statuses(db_url).values()).count("done") >= 10, timeout=30)
    # When every database session but ours is killed, five times, 0.5 s apart (each time
    # once the dispatcher has reconnected)
    killed: list[int] = []

    def kill_sessions() -> bool:
        killed.append(terminate_sessions(db_url))
        return killed[-1] > 0

    for _ in range(5):
        wait_until(kill_sessions, timeout=10)
        time.sleep(0.5)
    left = sum(1 for s in statuses(db_url).values() if s != "done")
    # Then the dispatcher reconnects and the graph finishes, every task run exactly once
    try:
        fleet.wait_done(db_url, timeout=60)
    finally:
        result = outcome(db_url, log, graph)
        fault_table.add(
            "PG sessions killed x5",
            tasks=result.tasks,
            faults=sum(1 for n in killed if n),
            lost=result.lost,
            repeated=result.repeated,
            recover=None,
            note=f"pg_terminate_backend of every session; {left} unfinished after",
        )
    assert sum(1 for n in killed if n) == 5, killed
    assert left > 0, "the graph finished during the kills"
    assert result.lost == 0, processes.logs()
    assert result.repeated == 0, {n: c for n, c in result.counts.items() if c > 1}
