"""Pauses and shared resources (issue 7, section 2): nothing that succeeded is failed,
nothing superseded runs.

Every scenario runs real dispatchers and forking workers against a private
redis-server and a SQLite file. Handlers are ``tests/chaos/chaos_handlers.py``: each
run journals its start and end (task id, job id, attempt, pid), so a test counts runs
per task and per attempt exactly; ``checker.check`` (tests/chaos) judges the history
where a scenario needs more than counts.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from faultlib import (
    CHAOS_DIR,
    Fleet,
    WriteLock,
    add_graph,
    calibrate_gil,
    events,
    holder_pid,
    ignored,
    journal_env,
    journal_lines,
    journal_starts,
    longest_tick_gap,
    redis_client,
    tasks,
    worker_lost,
)
from helpers import bridge, statuses, wait_until

from bridge.defaults import BUSY_TIMEOUT_MS, HEARTBEAT_TTL, LEASE_TTL

if str(CHAOS_DIR) not in sys.path:
    sys.path.insert(0, str(CHAOS_DIR))

from checker import check, read_history  # noqa: E402


def sleep_task(task_id: str, sleep: float, *, priority: int = 0, **labels: Any) -> dict[str, Any]:
    """A task whose handler journals its run and sleeps ``sleep`` seconds."""
    return {
        "id": task_id,
        "kind": "chaos_sleep",
        "payload": {"sleep": sleep, **labels},
        "priority": priority,
    }


def paused_graph() -> list[dict[str, Any]]:
    """~40 short tasks (0.05-0.3 s, some chained) and six of 3-8 s that start first."""
    graph = [sleep_task(f"long-{i}", 3.0 + i, priority=10) for i in range(6)]
    for i in range(40):
        spec = sleep_task(f"short-{i:02d}", 0.05 + (i % 6) * 0.05)
        if i % 5:
            spec["dependencies"] = [f"short-{i - 1:02d}"]
        graph.append(spec)
    return graph


def journal_of(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


def assert_each_ran_once(db: Path, journal: Path, logs: str) -> None:
    """Every task done, none failed, no WorkerLost, each handler started exactly once."""
    final = tasks(db)
    assert {t: r["status"] for t, r in final.items() if r["status"] != "done"} == {}, logs
    lost = worker_lost(db)
    assert lost == [], f"WorkerLost events: {[(e['task_id'], e['detail']) for e in lost]}"
    starts = journal_starts(journal)
    twice = {t: n for t, n in starts.items() if n != 1}
    assert twice == {}, f"handlers that did not run exactly once: {twice}"
    assert set(starts) == set(final), f"never ran: {sorted(set(final) - set(starts))}"


def start_fleet(processes, env, *, workers: int = 2) -> tuple[Fleet, Any]:
    fleet = Fleet(processes, env)
    dispatcher = fleet.start("dispatch")
    for _ in range(workers):
        fleet.start("worker", "--quiet")
    return fleet, dispatcher


def running_longs(journal: Path) -> int:
    lines = journal_lines(journal)
    started = {x["task"] for x in lines if x["event"] == "start" and x["task"].startswith("long")}
    ended = {x["task"] for x in lines if x["event"] == "end"}
    return len(started - ended)


# ------------------------------------------------------------------- 1. dispatcher paused


def test_dispatcher_paused_20s_while_tasks_finish_fails_nothing_and_runs_nothing_twice(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given ~40 short and six 3-8 s tasks on two forking workers, 8 slots
    journal = journal_of(tmp_path)
    env = {**journal_env(fault_env, journal), "BRIDGE_SLOTS": "8"}
    graph = paused_graph()
    add_graph(tmp_path, env, graph)
    fleet, dispatcher = start_fleet(processes, env)
    wait_until(lambda: running_longs(journal) == 2, timeout=30, every=0.05)
    # When the dispatcher is frozen (SIGSTOP) for 20 s while the workers finish what
    # they hold, then resumed
    os.kill(dispatcher.pid, signal.SIGSTOP)
    time.sleep(20)
    os.kill(dispatcher.pid, signal.SIGCONT)
    resumed = time.monotonic()
    # Then the graph finishes: every task done, none failed or lost, each ran once
    try:
        fleet.wait_done(db_path, timeout=90)
    finally:
        fault_table.add(
            "P1 dispatcher SIGSTOP 20 s",
            tasks=len(graph),
            faults=1,
            lost=sum(1 for s in statuses(db_path).values() if s != "done"),
            repeated=sum(1 for n in journal_starts(journal).values() if n > 1),
            recover=time.monotonic() - resumed,
            note="SIGCONT -> last task done",
        )
    assert_each_ran_once(db_path, journal, processes.logs())


# ------------------------------------------------------------------- 2. write lock held


def test_sqlite_write_lock_held_16s_while_tasks_finish_fails_nothing(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given the same graph and fleet
    journal = journal_of(tmp_path)
    env = {**journal_env(fault_env, journal), "BRIDGE_SLOTS": "8"}
    graph = paused_graph()
    add_graph(tmp_path, env, graph)
    fleet, _ = start_fleet(processes, env)
    wait_until(lambda: running_longs(journal) == 2, timeout=30, every=0.05)
    # When another process holds the write lock for 16 s (under the 30 s busy timeout)
    lock = WriteLock(db_path, 16.0)
    try:
        released = lock.wait(timeout=60)
    finally:
        lock.kill()
    assert 16.0 <= released - lock.taken < BUSY_TIMEOUT_MS / 1000
    # Then the graph finishes: every task done, none failed or lost, each ran once
    start = time.monotonic()
    try:
        fleet.wait_done(db_path, timeout=90)
    finally:
        fault_table.add(
            "P2 SQLite write lock 16 s",
            tasks=len(graph),
            faults=1,
            lost=sum(1 for s in statuses(db_path).values() if s != "done"),
            repeated=sum(1 for n in journal_starts(journal).values() if n > 1),
            recover=time.monotonic() - start,
            note="release -> last task done",
        )
    assert_each_ran_once(db_path, journal, processes.logs())


# ------------------------------------------------------------------- 3. GIL-bound handler

GIL_SECONDS = 14.0


def test_a_handler_holding_the_gil_14s_is_not_presumed_lost(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given one C call that holds the GIL ~14 s on this machine (a thread cannot tick
    # meanwhile: the longest gap between its ticks is about the call's duration)
    n = calibrate_gil(GIL_SECONDS)
    took, gap = longest_tick_gap(n // 14)
    assert gap >= 0.8 * took, f"sum(range(n)) let a thread run: call {took:.2f}s, gap {gap:.2f}s"
    journal = journal_of(tmp_path)
    env = journal_env(fault_env, journal)
    add_graph(tmp_path, env, [{"id": "gil", "kind": "chaos_gil", "payload": {"n": n}}])
    # When a forking worker runs it
    fleet, _ = start_fleet(processes, env, workers=1)
    try:
        fleet.wait_done(db_path, timeout=GIL_SECONDS * 3 + 30)
    finally:
        runs = [x for x in journal_lines(journal) if x["event"] == "end"]
        fault_table.add(
            "P3 GIL held 14 s",
            tasks=1,
            faults=1,
            lost=int(statuses(db_path).get("gil") != "done"),
            repeated=int(journal_starts(journal)["gil"] > 1),
            recover=None,
            note=f"n={n}; calibration call {took:.1f}s, tick gap {gap:.1f}s",
        )
    # Then it ends done in one attempt, its handler started once, and it really held the
    # GIL past the heartbeat limit
    row = tasks(db_path)["gil"]
    assert row["status"] == "done" and row["attempts"] == 1, row
    assert journal_starts(journal)["gil"] == 1
    assert worker_lost(db_path) == []
    start = next(x["t"] for x in journal_lines(journal) if x["event"] == "start")
    assert runs and runs[0]["t"] - start > HEARTBEAT_TTL, "the call was shorter than the limit"


# ------------------------------------------------------------------- 4. superseded attempts


def _in_a_waiting_list(client, job_id: str) -> bool:
    """True while ``job_id`` waits in a queue list (not a worker's intermediate list)."""
    for key in client.keys("*queue*"):
        if b"intermediate" in key or client.type(key) != b"list":
            continue
        if job_id.encode() in client.lrange(key, 0, -1):
            return True
    return False


def test_a_job_popped_by_a_paused_worker_never_runs_once_superseded(
    tmp_path, fault_env, db_path, redis_server, processes, fault_table
):
    # Given a dispatcher and one forking worker, idle, blocked on the queue
    journal = journal_of(tmp_path)
    env = journal_env(fault_env, journal)
    client = redis_client(redis_server.url)
    fleet = Fleet(processes, env)
    fleet.start("dispatch")
    paused = fleet.start("worker", "--quiet")
    wait_until(lambda: client.scard("rq:workers") >= 1, timeout=30)
    time.sleep(1.0)  # it is in its blocking pop
    # When it is frozen (SIGSTOP) and a task arrives: Redis hands the job to the frozen
    # worker's pending pop (the job leaves the queue), but the worker cannot run it
    os.kill(paused.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    add_graph(tmp_path, env, [sleep_task("popped", 0.5)])
    wait_until(lambda: (tasks(db_path)["popped"]["job_id"] or "") != "", timeout=15)
    first_job = tasks(db_path)["popped"]["job_id"]
    wait_until(lambda: not _in_a_waiting_list(client, first_job), timeout=10, every=0.05)
    # And it stays frozen past the heartbeat limit while a second worker is available
    fleet.start("worker", "--quiet")
    try:
        wait_until(lambda: tasks(db_path)["popped"]["attempts"] >= 2, timeout=HEARTBEAT_TTL + 30)
        wait_until(lambda: statuses(db_path)["popped"] == "done", timeout=30)
    finally:
        time.sleep(max(0.0, HEARTBEAT_TTL + 1 - (time.monotonic() - stopped_at)))
        os.kill(paused.pid, signal.SIGCONT)
    # Then, resumed, the frozen worker does not start the superseded attempt's handler
    time.sleep(5.0)
    lines = journal_lines(journal)
    starts = [(x["attempt"], x["job"], x["pid"]) for x in lines if x["event"] == "start"]
    fault_table.add(
        "P4a worker paused holding a popped job",
        tasks=1,
        faults=1,
        lost=int(statuses(db_path)["popped"] != "done"),
        repeated=int(len(starts) > 1),
        recover=None,
        note=f"handler starts (attempt, job, pid): {starts}",
    )
    assert [s[1] for s in starts] == [tasks(db_path)["popped"]["job_id"]], (
        f"handler starts {starts}; the first (superseded) job was {first_job}"
    )
    assert first_job != tasks(db_path)["popped"]["job_id"]
    assert statuses(db_path)["popped"] == "done"
    # And any report of the superseded attempt was ignored, nothing else
    row = tasks(db_path)["popped"]
    stale = [
        e
        for e in events(db_path, "popped")
        if e["from"] is not None and e["attempt"] < row["attempts"] and e["to"] != "queued"
    ]
    assert all((e["detail"] or "").startswith("ignored") for e in stale), stale
    assert paused.poll() is None, "the resumed worker exited"


def _unsent(db_path: Path, client) -> list[tuple[str, str]]:
    """Tasks committed ``queued`` whose job Redis does not know at all (the dispatcher is
    between its commit and its enqueue)."""
    found = []
    for task_id, row in tasks(db_path).items():
        job = row["job_id"]
        if row["status"] == "queued" and job and not client.keys(f"*{job}*"):
            found.append((task_id, job))
    return found


def test_a_paused_former_dispatcher_never_enqueues_superseded_jobs(
    tmp_path, fault_env, db_path, redis_server, processes, fault_table
):
    # Given an active and a standby dispatcher, two workers, 400 quick tasks
    journal = journal_of(tmp_path)
    env = {**journal_env(fault_env, journal), "BRIDGE_SLOTS": "64"}
    graph = [sleep_task(f"q-{i:03d}", 0.0) for i in range(400)]
    add_graph(tmp_path, env, graph)
    client = redis_client(redis_server.url)
    fleet = Fleet(processes, env)
    active = fleet.start("dispatch")
    wait_until(lambda: holder_pid(db_path) == active.pid, timeout=30)
    fleet.start("dispatch")
    for _ in range(2):
        fleet.start("worker", "--quiet")
    # When the active one is frozen right after it committed `queued` and before it
    # enqueued those jobs (found by freezing it at random moments until it is so)
    targets: list[tuple[str, str]] = []
    for _ in range(1500):
        if active.poll() is not None or all(s == "done" for s in statuses(db_path).values()):
            break
        os.kill(active.pid, signal.SIGSTOP)
        targets = _unsent(db_path, client)
        if targets:
            break
        os.kill(active.pid, signal.SIGCONT)
        time.sleep(0.003)
    if not targets:
        if active.poll() is None:
            os.kill(active.pid, signal.SIGCONT)
        pytest.skip("no moment between the dispatcher's commit and its enqueue was caught")
    fleet.forget(active)
    frozen_at = time.monotonic()
    # And stays frozen until the standby took over and sent those tasks again
    target_ids = {t for t, _ in targets}
    try:
        wait_until(lambda: holder_pid(db_path) not in (None, active.pid), timeout=LEASE_TTL + 20)
        wait_until(
            lambda: all(statuses(db_path)[t] == "done" for t in target_ids), timeout=LEASE_TTL + 30
        )
    finally:
        os.kill(active.pid, signal.SIGCONT)
    # Then, resumed, the former dispatcher enqueues nothing it had committed: no handler
    # of a superseded attempt starts, and the graph finishes
    time.sleep(5.0)
    fleet.wait_done(db_path, timeout=60)
    report = check(
        read_history(db_path, journal, tmp_path / "no-faults.jsonl"), heartbeat_ttl=HEARTBEAT_TTL
    )
    starts = journal_starts(journal)
    fault_table.add(
        "P4b former dispatcher paused before enqueue",
        tasks=len(graph),
        faults=1,
        lost=sum(1 for s in statuses(db_path).values() if s != "done"),
        repeated=sum(1 for n in starts.values() if n > 1),
        recover=time.monotonic() - frozen_at,
        note=f"{len(targets)} task(s) committed but not enqueued when frozen",
    )
    assert report.violations == [], report.summary()
    assert {t: starts[t] for t in target_ids if starts[t] != 1} == {}


# ------------------------------------------------------------------- 5. ids reused


def test_a_task_id_reused_after_clean_is_not_completed_by_the_old_run(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given a long task running as attempt 1
    journal = journal_of(tmp_path)
    env = journal_env(fault_env, journal)
    add_graph(tmp_path, env, [sleep_task("reused", 8.0, generation=1)])
    fleet, _ = start_fleet(processes, env, workers=1)
    wait_until(lambda: journal_starts(journal)["reused"] == 1, timeout=30)
    # When the database is cleaned and a task of the same id is added again
    cleaned = bridge("clean", "--yes", env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    cleaned_at = time.time()
    add_graph(tmp_path, env, [sleep_task("reused", 0.5, generation=2)])
    # Then the new task runs by its own run and ends done, never stuck queued
    try:
        fleet.wait_done(db_path, timeout=45)
    finally:
        runs = [
            (x.get("generation"), round(x["t"] - cleaned_at, 1))
            for x in journal_lines(journal)
            if x["event"] == "start"
        ]
        fault_table.add(
            "P5 id reused after clean",
            tasks=2,
            faults=1,
            lost=int(statuses(db_path).get("reused") != "done"),
            repeated=0,
            recover=None,
            note=f"starts (generation, s after clean): {runs}",
        )
    row = tasks(db_path)["reused"]
    assert json.loads(row["output"])["generation"] == 2, f"completed by the old run: {row}"
    second = [
        x
        for x in journal_lines(journal)
        if x["event"] == "start" and x.get("generation") == 2 and x["t"] > cleaned_at
    ]
    assert len(second) == 1, journal_lines(journal)
    assert [e["to"] for e in events(db_path, "reused")].count("done") == 1


# ------------------------------------------------------------------- 6. sharing Redis


def test_two_databases_on_one_redis_and_queue_never_take_each_others_reports(
    tmp_path, fault_env, processes, fault_table
):
    # Given two databases on the same Redis and queue name, each with the same task ids
    journal = journal_of(tmp_path)
    envs = {}
    for tag in ("A", "B"):
        db = tmp_path / f"{tag}.db"
        envs[tag] = {
            **journal_env(fault_env, journal),
            "BRIDGE_DATABASE_URL": f"sqlite:///{db}",
            "BRIDGE_SLOTS": "4",
        }
        graph = [sleep_task(f"t{i:02d}", 0.2 + 0.1 * (i % 3), tag=tag) for i in range(20)]
        add_graph(tmp_path, envs[tag], graph)
    fleet_a = Fleet(processes, envs["A"])
    fleet_a.start("dispatch")
    fleet_a.start("worker", "--quiet")
    wait_until(lambda: "done" in statuses(tmp_path / "A.db").values(), timeout=30)
    # When the second database's dispatcher starts on the same queue
    fleet_b = Fleet(processes, envs["B"])
    second = fleet_b.start("dispatch")
    try:
        second.wait(timeout=8)
    except Exception:  # still running: it was not refused
        pass
    refused = second.poll() is not None
    outcome_note = "second dispatcher refused" if refused else "both ran"
    try:
        if refused:
            # Then it is refused in one line, and the first database goes on unharmed
            out = sorted(tmp_path.glob("proc-*-dispatch.log"))[-1].read_text()
            lines = [line for line in out.splitlines() if line.strip()]
            assert second.returncode != 0 and lines and lines[-1].startswith("error:"), out
            assert "Traceback" not in out, out
            fleet_a.wait_done(tmp_path / "A.db", timeout=60)
            checked = ["A"]
        else:
            # Or both run, each finishing its own tasks with its own reports
            fleet_b.start("worker", "--quiet")
            fleet_a.wait_done(tmp_path / "A.db", timeout=60)
            fleet_b.wait_done(tmp_path / "B.db", timeout=60)
            checked = ["A", "B"]
    finally:
        fault_table.add(
            "P6a two databases, one Redis and queue",
            tasks=40,
            faults=1,
            lost=sum(  # a refused database's tasks wait for their own Redis: not lost
                1
                for tag in (("A",) if refused else ("A", "B"))
                for s in statuses(tmp_path / f"{tag}.db").values()
                if s != "done"
            ),
            repeated=0,
            recover=None,
            note=outcome_note,
        )
    for tag in checked:
        db = tmp_path / f"{tag}.db"
        assert ignored(db) == [], f"{tag} recorded reports it ignored: {ignored(db)[:5]}"
        assert worker_lost(db) == [], f"{tag}: {worker_lost(db)[:5]}"
        attempts = {t: r["attempts"] for t, r in tasks(db).items() if r["attempts"] != 1}
        assert attempts == {}, f"{tag}: tasks sent more than once: {attempts}"
        outputs = {t: r["status"] for t, r in tasks(db).items()}
        assert set(outputs.values()) == {"done"}, outputs
    runs = {(x.get("tag"), x["task"]) for x in journal_lines(journal) if x["event"] == "start"}
    for tag in checked:
        assert {t for g, t in runs if g == tag} == set(tasks(tmp_path / f"{tag}.db"))


def test_two_queues_on_one_database_do_not_livelock(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given tasks added under queue a and under queue b of one database, some running
    # (or waiting in their queue) longer than a dispatcher's grace before it judges them
    journal = journal_of(tmp_path)
    base = {**journal_env(fault_env, journal), "BRIDGE_SLOTS": "3"}
    env = {q: {**base, "BRIDGE_QUEUE": q} for q in ("a", "b")}
    for q in ("a", "b"):
        graph = [sleep_task(f"{q}-{i:02d}", 7.0 if i < 3 else 1.0, tag=q) for i in range(6)]
        add_graph(tmp_path, env[q], graph)
    # When a dispatcher and a worker run for each queue
    fleet = Fleet(processes, base)
    for q in ("a", "b"):
        fleet.start("dispatch", env=env[q])
        fleet.start("worker", "--quiet", env=env[q])
    # Then every task is done in one attempt: no queue's dispatcher judges the other's
    try:
        fleet.wait_done(db_path, timeout=90)
    finally:
        rows = tasks(db_path)
        fault_table.add(
            "P6b two queues, one database",
            tasks=12,
            faults=0,
            lost=sum(1 for r in rows.values() if r["status"] != "done"),
            repeated=sum(1 for r in rows.values() if r["attempts"] > 1),
            recover=None,
            note=f"max attempts {max((r['attempts'] for r in rows.values()), default=0)}",
        )
    assert {t: r["attempts"] for t, r in tasks(db_path).items() if r["attempts"] != 1} == {}
    assert worker_lost(db_path) == []
    assert {t: n for t, n in journal_starts(journal).items() if n != 1} == {}


# ------------------------------------------------------------------- 7. database errors

LOCK_PAST_TIMEOUT = BUSY_TIMEOUT_MS / 1000 + 5


def test_the_dispatcher_survives_a_database_locked_past_its_busy_timeout(
    tmp_path, fault_env, db_path, processes, fault_table
):
    # Given a running graph
    journal = journal_of(tmp_path)
    env = {**journal_env(fault_env, journal), "BRIDGE_SLOTS": "4"}
    graph = [sleep_task(f"s-{i:02d}", 0.3) for i in range(30)]
    add_graph(tmp_path, env, graph)
    fleet, dispatcher = start_fleet(processes, env)
    wait_until(lambda: list(statuses(db_path).values()).count("done") >= 3, timeout=30)
    # When another process holds the write lock past the dispatcher's busy timeout
    lock = WriteLock(db_path, LOCK_PAST_TIMEOUT)
    try:
        released = lock.wait(timeout=LOCK_PAST_TIMEOUT + 30)
    finally:
        lock.kill()
    # Then the dispatcher is still running, and it said what happened
    time.sleep(2.0)
    log = sorted(tmp_path.glob("proc-*-dispatch.log"))[0].read_text(errors="replace")
    assert dispatcher.poll() is None, f"the dispatcher exited ({dispatcher.returncode}):\n{log}"
    said = [
        line
        for line in log.splitlines()
        if ("locked" in line or "database" in line.lower()) and "dispatching queue" not in line
    ]
    assert said, f"the dispatcher did not log the database error:\n{log}"
    # And the graph finishes
    try:
        recover = fleet.wait_done(db_path, timeout=60)
    finally:
        fault_table.add(
            "P7 write lock 35 s (> busy timeout)",
            tasks=len(graph),
            faults=1,
            lost=sum(1 for s in statuses(db_path).values() if s != "done"),
            repeated=sum(1 for n in journal_starts(journal).values() if n > 1),
            recover=time.time() - released,
            note="release -> last task done",
        )
    assert recover >= 0
    # And it exits 0 on SIGTERM, and only then
    fleet.forget(dispatcher)
    dispatcher.send_signal(signal.SIGTERM)
    assert dispatcher.wait(timeout=30) == 0, processes.logs()
