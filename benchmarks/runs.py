"""One measured run each: bridge or plain RQ, one workload, one worker class.

Timed as a user would see it. The work is in place first (tasks committed, jobs
enqueued); the clock starts just before the processes are started, so the
dispatcher's and the workers' start-up are inside it, and stops when the last
task is ``done`` (bridge: its status in the database) or the last job is in
RQ's finished registry. Both sides are polled alike.

Every run returns a flat dict of numbers (the report keeps them all in
``BENCH_JSON``), with ``cpu_ms_<process>`` per task for each process. On
PostgreSQL the server processes that served bridge's dispatcher count as the
process ``postgres`` (the runner's own polling connection left out): the
database's work is part of bridge's cost there, as SQLite's is inside the
dispatcher.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path

from benchmarks import profiling
from benchmarks.cpu import CpuMeter, LoadMeter, per_task_ms
from benchmarks.harness import (
    BRIDGE,
    BRIDGE_QUEUE,
    CHAIN_POLL,
    RQ_QUEUE,
    BenchDb,
    BenchError,
    CommandMeter,
    Env,
    Popen,
    Processes,
    new_db,
    spawn_bridge,
    spawn_rq_workers,
    vm_hwm_kb,
    wait_bridge_done,
    wait_bridge_ready,
    wait_rq_done,
)
from benchmarks.workloads import (
    chain_specs,
    explain,
    fill_history,
    link_history,
    noop_specs,
    preload_bridge,
    preload_rq,
    preload_rq_chain,
)
from bridge.graph import TaskSpec

Numbers = dict[str, float]
NOOP_PREFIX = "t"
"""Ids of scenario 1's tasks (the history's start with ``h``)."""


def _start_bridge(
    env: Env,
    procs: Processes,
    db: BenchDb,
    workers: int,
    worker_class: str,
    meter: CpuMeter,
    extra_env: dict[str, str] | None = None,
) -> tuple[Popen[bytes], list[Popen[bytes]]]:
    dispatcher, started = spawn_bridge(env, procs, db, workers, worker_class, extra_env)
    meter.add("dispatcher", dispatcher.pid)
    for i, proc in enumerate(started):
        meter.add(f"worker{i + 1}", proc.pid)
    return dispatcher, started


def _add_postgres(db: BenchDb, meter: CpuMeter) -> None:
    """PostgreSQL: meter the server processes of the run's database (started after t0)."""
    if db.postgres:
        with db.connect() as conn:
            for pid in db.backend_pids(conn):
                meter.add("postgres", pid)


def _start_rq(
    env: Env, procs: Processes, workers: int, worker_class: str, meter: CpuMeter
) -> list[Popen[bytes]]:
    started = spawn_rq_workers(env, procs, workers, worker_class)
    for i, proc in enumerate(started):
        meter.add(f"worker{i + 1}", proc.pid)
    return started


def _timed(
    count: int,
    t0: float,
    ends: tuple[float, float],
    cpu: dict[str, float],
    noise: Numbers,
    commands: dict[str, int] | None = None,
) -> Numbers:
    first, last = ends
    numbers = {
        "seconds": last - t0,
        "per_second": count / (last - t0),
        "first_done_seconds": first - t0,
        **per_task_ms(cpu, count),
        **noise,
    }
    if commands is not None:
        numbers["redis_calls_per_task"] = sum(commands.values()) / count
        for name, calls in sorted(commands.items()):
            numbers[f"redis_cmd_{name.replace('|', '_')}"] = calls / count
    return numbers


def bridge_throughput(env: Env, tasks: int, worker_class: str, history: int = 0) -> Numbers:
    """Scenario 1 (and 3 with ``history``): ``tasks`` independent noops, 2 workers."""
    with env.sandbox(f"bridge-throughput-{worker_class}-h{history}") as (folder, procs):
        db, engine = new_db(env)
        if history:
            fill_history(db, history)
        client_cpu = preload_bridge(engine, noop_specs(tasks, NOOP_PREFIX))
        engine.dispose()
        if db.postgres:
            env.plans[f"h{history}"] = explain(db)
        meter = CpuMeter({"redis": env.redis_pid()})
        calls = CommandMeter(env.client)
        load = LoadMeter()
        t0 = time.perf_counter()
        dispatcher, workers = _start_bridge(env, procs, db, 2, worker_class, meter)
        spies = profiling.attach(env, folder, {"dispatcher": dispatcher, "worker1": workers[0]})
        ends = wait_bridge_done(
            db, [dispatcher, *workers], procs, env.args.timeout, prefix=NOOP_PREFIX
        )
        commands = calls.stop()
        _add_postgres(db, meter)
        cpu = meter.stop()
        hwm = vm_hwm_kb(dispatcher.pid)
        noise = load.stop(sum(cpu.values()))
        if spies:
            procs.stop_all()
            profiling.collect(env, spies, f"{worker_class}-h{history}")
    cpu["client"] = client_cpu
    return {**_timed(tasks, t0, ends, cpu, noise, commands), "dispatcher_hwm_kb": hwm or 0}


def bridge_pruning(env: Env, tasks: int, worker_class: str, history: int, prune: bool) -> Numbers:
    """Scenario 6: ``tasks`` noops over ``history`` old finished tasks (graphs of 10),
    with the dispatcher pruning them (``BRIDGE_RETENTION=1d``) or not; 2 workers."""
    label = "prune" if prune else "keep"
    with env.sandbox(f"bridge-{label}-{worker_class}-h{history}") as (_folder, procs):
        db, engine = new_db(env)
        fill_history(db, history)
        link_history(db, history, group=10)
        preload_bridge(engine, noop_specs(tasks, NOOP_PREFIX))
        engine.dispose()
        meter = CpuMeter({"redis": env.redis_pid()})
        load = LoadMeter()
        extra = {"BRIDGE_RETENTION": "1d"} if prune else None
        t0 = time.perf_counter()
        dispatcher, workers = _start_bridge(env, procs, db, 2, worker_class, meter, extra)
        ends = wait_bridge_done(
            db, [dispatcher, *workers], procs, env.args.timeout, prefix=NOOP_PREFIX
        )
        cpu = meter.stop()
        noise = load.stop(sum(cpu.values()))
        left = db.scalar("SELECT count(*) FROM tasks WHERE id LIKE 'h%'")
        seconds_to_all = None
        if prune:  # how long the dispatcher takes to prune all of it (after the timed window)
            deadline = time.monotonic() + env.args.timeout
            while left and time.monotonic() < deadline and dispatcher.poll() is None:
                time.sleep(0.25)
                left_now = db.scalar("SELECT count(*) FROM tasks WHERE id LIKE 'h%'")
                if not left_now:
                    seconds_to_all = time.perf_counter() - t0
                    break
    numbers = _timed(tasks, t0, ends, cpu, noise)
    numbers["history_pruned_in_window"] = history - left
    if seconds_to_all is not None:
        numbers["seconds_to_prune_all"] = seconds_to_all
    return numbers


def rq_throughput(env: Env, jobs: int, worker_class: str) -> Numbers:
    """Scenario 1, plain RQ: ``jobs`` noops enqueued in one MULTI/EXEC, 2 workers."""
    with env.sandbox(f"rq-throughput-{worker_class}") as (_folder, procs):
        client_cpu = preload_rq(env, jobs)
        meter = CpuMeter({"redis": env.redis_pid()})
        calls = CommandMeter(env.client)
        load = LoadMeter()
        t0 = time.perf_counter()
        workers = _start_rq(env, procs, 2, worker_class, meter)
        ends = wait_rq_done(env, jobs, workers, procs, env.args.timeout)
        commands = calls.stop()
        cpu = meter.stop()
        noise = load.stop(sum(cpu.values()))
    cpu["client"] = client_cpu
    return _timed(jobs, t0, ends, cpu, noise, commands)


def bridge_chain(env: Env, links: int, worker_class: str) -> Numbers:
    """Scenario 2: a linear chain of noops, 1 worker."""
    with env.sandbox(f"bridge-chain-{worker_class}") as (_folder, procs):
        db, engine = new_db(env)
        preload_bridge(engine, chain_specs(links))
        engine.dispose()
        meter = CpuMeter({"redis": env.redis_pid()})
        calls = CommandMeter(env.client)
        load = LoadMeter()
        t0 = time.perf_counter()
        dispatcher, workers = _start_bridge(env, procs, db, 1, worker_class, meter)
        ends = wait_bridge_done(
            db, [dispatcher, *workers], procs, env.args.timeout, every=CHAIN_POLL
        )
        commands = calls.stop()
        _add_postgres(db, meter)
        cpu = meter.stop()
        noise = load.stop(sum(cpu.values()))
        with db.connect() as conn:
            first, last = conn.execute(
                "SELECT min(started_at), max(completed_at) FROM tasks"
            ).fetchone()
    return _chain(links, t0, ends, cpu, noise, commands, _seconds_between(first, last))


def rq_chain(env: Env, links: int, worker_class: str) -> Numbers:
    """Scenario 2, plain RQ: job i enqueued with ``depends_on`` job i-1, 1 worker."""
    with env.sandbox(f"rq-chain-{worker_class}") as (_folder, procs):
        head, tail = preload_rq_chain(env, links)
        meter = CpuMeter({"redis": env.redis_pid()})
        calls = CommandMeter(env.client)
        load = LoadMeter()
        t0 = time.perf_counter()
        workers = _start_rq(env, procs, 1, worker_class, meter)
        ends = wait_rq_done(env, links, workers, procs, env.args.timeout, every=CHAIN_POLL)
        commands = calls.stop()
        cpu = meter.stop()
        noise = load.stop(sum(cpu.values()))
        head.refresh()
        tail.refresh()
        if head.started_at is None or tail.ended_at is None:
            raise BenchError("RQ chain jobs carry no start/end time")
        span = (tail.ended_at - head.started_at).total_seconds()
    return _chain(links, t0, ends, cpu, noise, commands, span)


def _chain(
    links: int,
    t0: float,
    ends: tuple[float, float],
    cpu: dict[str, float],
    noise: Numbers,
    commands: dict[str, int],
    span: float,
) -> Numbers:
    numbers = _timed(links, t0, ends, cpu, noise, commands)
    numbers["ms_per_link"] = numbers["seconds"] * 1000 / links
    numbers["span_ms_per_link"] = span * 1000 / links
    return numbers


def _seconds_between(first: str, last: str) -> float:
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return (datetime.strptime(last, fmt) - datetime.strptime(first, fmt)).total_seconds()


def bridge_bulk_cli(
    env: Env, graph_file: Path, count: int, keep: bool = False
) -> tuple[Numbers, BenchDb]:
    """Scenario 4: ``bridge add --file`` as a real subprocess, timed end to end.

    The database already has its schema (an existing deployment's). With ``keep``
    the loaded database outlives the run, for scenario 5b (which drops it).
    """
    with env.sandbox("bridge-bulk-cli") as (folder, _procs):
        db, engine = new_db(env)
        engine.dispose()
        out, err = folder / "add.out", folder / "add.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [*BRIDGE, "add", "--file", str(graph_file)],
                env=env.bridge_env(db, "simple"),
                cwd=str(folder),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
            peak_kb = 0  # VmHWM restarts at exec; ru_maxrss would count the fork of this process
            deadline = time.monotonic() + env.args.timeout
            while proc.poll() is None:
                peak_kb = max(peak_kb, vm_hwm_kb(proc.pid) or 0)
                if time.monotonic() > deadline:
                    proc.kill()
                try:
                    proc.wait(timeout=0.02)
                except subprocess.TimeoutExpired:
                    pass
            seconds = time.perf_counter() - t0
        text = out.read_text() + err.read_text()
        if proc.returncode != 0 or f"added {count} task(s)" not in text:
            raise BenchError(f"bridge add failed ({proc.returncode}): {text}")
        db.kept = keep
    return {"seconds": seconds, "per_second": count / seconds, "peak_rss_kb": peak_kb}, db


def bridge_bulk_store(env: Env, specs: list[TaskSpec]) -> Numbers:
    """Scenario 4, in process: ``store.add_tasks`` in one transaction, commit included."""
    with env.sandbox("bridge-bulk-store") as (_folder, _procs):
        _db, engine = new_db(env)
        t0 = time.perf_counter()
        preload_bridge(engine, specs)
        seconds = time.perf_counter() - t0
        engine.dispose()
    return {"seconds": seconds, "per_second": len(specs) / seconds}


def rq_bulk(env: Env, count: int) -> Numbers:
    """Scenario 4, plain RQ: ``prepare_data`` + ``enqueue_many`` of independent jobs."""
    with env.sandbox("rq-bulk") as (_folder, _procs):
        t0 = time.perf_counter()
        preload_rq(env, count)
        seconds = time.perf_counter() - t0
        queued = env.client.llen(f"rq:queue:{RQ_QUEUE}")
        if queued != count:
            raise BenchError(f"RQ queue holds {queued} of {count} jobs")
    return {"seconds": seconds, "per_second": count / seconds}


def bridge_memory_complete(env: Env, specs: list[TaskSpec], worker_class: str) -> Numbers:
    """Scenario 5a: a layered graph run to completion; dispatcher VmHWM before stopping it."""
    with env.sandbox("bridge-memory-complete") as (_folder, procs):
        db, engine = new_db(env)
        preload_bridge(engine, specs)
        engine.dispose()
        meter = CpuMeter()
        t0 = time.perf_counter()
        dispatcher, workers = _start_bridge(env, procs, db, 2, worker_class, meter)
        ends = wait_bridge_done(db, [dispatcher, *workers], procs, env.args.timeout)
        cpu = meter.stop()
        hwm = vm_hwm_kb(dispatcher.pid)
    return {**_timed(len(specs), t0, ends, cpu, {}), "hwm_kb": hwm or 0}


def bridge_memory_bounded(
    env: Env, db: BenchDb, count: int, seconds: float, worker_class: str
) -> Numbers:
    """Scenario 5b: ``db`` holds the whole bulk graph; dispatch for ``seconds``, VmHWM then.

    ``db`` (kept by scenario 4) is dropped with this run's sandbox.
    """
    with env.sandbox("bridge-memory-bounded") as (_folder, procs):
        db.kept = False
        env.sandbox_dbs.append(db)
        t0 = time.perf_counter()
        dispatcher, workers = spawn_bridge(env, procs, db, 2, worker_class)
        wait_bridge_ready(env, procs, db, [dispatcher, *workers], 2)
        ready = time.perf_counter() - t0
        time.sleep(seconds)
        hwm = vm_hwm_kb(dispatcher.pid)
        elapsed = time.perf_counter() - t0
        if dispatcher.poll() is not None:
            raise BenchError(f"dispatcher died\n{procs.logs()}")
        done = db.scalar("SELECT count(*) FROM tasks WHERE status = 'done'")
    return {
        "seconds": elapsed,
        "startup_seconds": ready,
        "tasks": count,
        "done": done,
        "hwm_kb": hwm or 0,
    }


# ------------------------------------------------------------------------------ fan-in


def fanin_dispatch(env: Env, inputs: int, samples: int) -> dict[str, list[float]]:
    """Scenario 7: milliseconds from submit to dispatch of a task with 1 input and of one
    with ``inputs`` inputs (all done, each output a small JSON object), interleaved.

    In process, on the store and the broker the dispatcher uses: the fan-in is added
    (``bridge add``'s transaction), claimed (the dispatcher's claim, which gathers the
    inputs in one query per chunk and checks their size) and enqueued on the private
    Redis. Wake-up and polling delays, the same for both, are left out so the cost of
    the inputs is what the ratio shows. Each sample's task is then finished, freeing
    its slot, outside the clock.
    """
    from bridge import store
    from bridge.broker import Broker
    from bridge.graph import make_spec
    from bridge.messages import Report
    from bridge.states import ReportKind

    with env.sandbox("fanin") as (_folder, _procs):
        _db, engine = new_db(env)
        deps = [f"dep{n}" for n in range(inputs)]
        preload_bridge(engine, [make_spec(task_id=d) for d in deps])
        with store.writing(engine) as session:
            session.execute(
                store.TASKS.update().values(
                    status="done", output='{"value": 1, "name": "a dependency"}'
                )
            )
            store.reset_slots(session=session, slots=env.args.slots)
            namespace = store.namespace(session=session)
        broker = Broker(env.client, namespace)
        times: dict[str, list[float]] = {"one": [], "many": []}
        for sample in range(samples):
            for label, count in (("one", 1), ("many", inputs)):
                spec = make_spec(task_id=f"fanin-{label}-{sample}", dependencies=deps[:count])
                started = time.perf_counter()
                with store.writing(engine) as session:
                    store.add_tasks(session=session, specs=[spec], queue=BRIDGE_QUEUE)
                with store.writing(engine) as session:
                    (dispatch,) = store.claim_ready(session=session, slots=env.args.slots)
                broker.enqueue([dispatch])
                times[label].append((time.perf_counter() - started) * 1000)
                if len(dispatch.inputs or {}) != count:
                    raise BenchError(f"fan-in carried {len(dispatch.inputs or {})} inputs")
                done = Report(
                    dispatch.task_id, dispatch.attempt, ReportKind.SUCCEEDED, dispatch.job_id
                )
                with store.writing(engine) as session:
                    store.apply_reports(session=session, reports=[done])
        engine.dispose()
    return times
