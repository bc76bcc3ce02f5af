"""The scenarios: each runs its measured runs in rounds and turns them into rows.

Bridge and plain RQ are interleaved (bridge, rq, bridge, rq, ...) so a slow spell
of the shared machine hits both sides, and every row shows medians. Throughput
and chain run once for each worker class asked for (``--worker-classes``), the
same class on both sides.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import runs as measure
from benchmarks.harness import Env
from benchmarks.report import QUIET, Results, Row, median, ratio_row, verdict
from benchmarks.workloads import layered_graph
from bridge import graph

Run = dict[str, float]
THROUGHPUT_TARGET = 0.8
CHAIN_TARGET = {"sqlite": 1.0, "postgresql": 2.0}
"""Per-link latency against RQ's ``depends_on``: on PostgreSQL every link pays a few
network round trips to the server that SQLite's in-process calls do not (issue 8)."""
HISTORY_TARGET = 0.9
BULK_TARGET = 0.5
MEMORY_LIMIT_MB = 150.0
PRUNE_TARGET = 0.8
PROCESSES = ("dispatcher", "worker1", "worker2", "redis", "postgres", "client")


def rounds(env: Env, steps: Sequence[tuple[str, Callable[[], Run]]]) -> dict[str, list[Run]]:
    """Run ``steps`` in turn, ``--repeat`` times; returns each step's runs."""
    out: dict[str, list[Run]] = {label: [] for label, _ in steps}
    for i in range(env.args.repeat):
        for label, fn in steps:
            started = time.perf_counter()
            result = fn()
            out[label].append(result)
            shown = ", ".join(
                f"{k}={v:.4g}"
                for k, v in result.items()
                if not k.startswith(("cpu_ms_", "redis_cmd_"))
            )
            print(
                f"  {label} [{i + 1}/{env.args.repeat}] {shown}"
                f" ({time.perf_counter() - started:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    return out


def quiet_row(
    scenario: str, metric: str, b_runs: list[Run], r_runs: list[Run], key: str
) -> list[Row]:
    """The medians again over the runs the rest of the machine left alone (if any)."""
    b_quiet = [r for r in b_runs if r.get("other_cores", 1.0) < QUIET]
    r_quiet = [r for r in r_runs if r.get("other_cores", 1.0) < QUIET]
    if not b_quiet or not r_quiet or (len(b_quiet), len(r_quiet)) == (len(b_runs), len(r_runs)):
        return []  # nothing to compare, or the same as the row above
    note = (
        f"only runs with < {QUIET} cores of other load:"
        f" {len(b_quiet)}/{len(b_runs)} bridge, {len(r_quiet)}/{len(r_runs)} RQ"
    )
    return [ratio_row(scenario, metric, median(b_quiet, key), median(r_quiet, key), note=note)]


def paired_ratios(b_runs: list[Run], r_runs: list[Run], key: str) -> str:
    """Bridge / RQ round by round: how much the ratio moved between rounds."""
    pairs = [b[key] / r[key] for b, r in zip(b_runs, r_runs, strict=False) if r[key]]
    return "per round: " + ", ".join(f"{p:.2f}" for p in pairs)


def cpu_rows(scenario: str, b_runs: list[Run], r_runs: list[Run]) -> list[Row]:
    """CPU milliseconds per task of each process, and of all of them, both sides."""
    rows = [
        ratio_row(
            scenario,
            "CPU ms/task, all processes",
            median(b_runs, "cpu_ms_total"),
            median(r_runs, "cpu_ms_total"),
            note="each process from its start (Redis: over the timed window) to the last done;"
            " client = adding the tasks / enqueueing the jobs, before the clock",
        )
    ]
    for name in PROCESSES:
        key = f"cpu_ms_{name}"
        b = median(b_runs, key) if key in b_runs[0] else None
        r = median(r_runs, key) if key in r_runs[0] else None
        if b is None and r is None:
            continue  # postgres: SQLite runs have no server
        rows.append(
            Row(
                scenario,
                f"CPU ms/task, {name}",
                b,
                r,
                b / r if b is not None and r else None,
                "(info)",
            )
        )
    return rows


def redis_rows(scenario: str, b_runs: list[Run], r_runs: list[Run]) -> list[Row]:
    """Redis commands per task on each side, and which commands they are."""
    if "redis_calls_per_task" not in b_runs[0] or "redis_calls_per_task" not in r_runs[0]:
        return []

    def top(runs: list[Run]) -> str:
        keys = {k for r in runs for k in r if k.startswith("redis_cmd_")}
        # A command some runs never sent (a script loaded once) counts 0 in those runs.
        per_task = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
        ranked = sorted(keys, key=lambda k: (-per_task[k], k))[:8]
        return " ".join(f"{k.removeprefix('redis_cmd_')} {per_task[k]:.2f}" for k in ranked)

    return [
        ratio_row(
            scenario,
            "Redis commands/task",
            median(b_runs, "redis_calls_per_task"),
            median(r_runs, "redis_calls_per_task"),
            note=f"bridge: {top(b_runs)}; RQ: {top(r_runs)}",
        )
    ]


def throughput(env: Env, res: Results, worker_class: str) -> None:
    """Scenario 1 (and 3): ``--tasks`` noops, 2 workers, clock from process start."""
    args = env.args
    tasks = args.tasks
    with_history = "history" in args.only and worker_class == args.worker_classes[0]
    steps: list[tuple[str, Callable[[], Run]]] = []
    if "throughput" in args.only:
        steps.append(("bridge", lambda: measure.bridge_throughput(env, tasks, worker_class)))
        steps.append(("rq", lambda: measure.rq_throughput(env, tasks, worker_class)))
    elif with_history:
        steps.append(("bridge", lambda: measure.bridge_throughput(env, tasks, worker_class)))
    if with_history:
        steps.append(
            (
                "bridge+history",
                lambda: measure.bridge_throughput(env, tasks, worker_class, args.history),
            )
        )
    if not steps:
        return
    print(f"[1] throughput, {worker_class}: {tasks} noop tasks, 2 workers", file=sys.stderr)
    runs = rounds(env, steps)
    b_runs = res.raw[f"throughput_bridge_{worker_class}"] = runs["bridge"]
    b = median(b_runs, "per_second")
    scenario = f"1 throughput, {worker_class}"
    if "rq" in runs:
        r_runs = res.raw[f"throughput_rq_{worker_class}"] = runs["rq"]
        r = median(r_runs, "per_second")
        res.rows.append(
            ratio_row(
                scenario,
                f"tasks/s ({tasks})",
                b,
                r,
                f">= {THROUGHPUT_TARGET}",
                b / r >= THROUGHPUT_TARGET,
                note="processes started -> last task done; work in place before; 2 workers,"
                f" BRIDGE_SLOTS={args.slots}; {paired_ratios(b_runs, r_runs, 'per_second')}",
            )
        )
        res.rows += quiet_row(scenario, "tasks/s, quiet runs", b_runs, r_runs, "per_second")
        res.rows.append(
            ratio_row(
                scenario,
                "s to first done",
                median(b_runs, "first_done_seconds"),
                median(r_runs, "first_done_seconds"),
                note="start-up: processes started -> first task seen done",
            )
        )
        res.rows += cpu_rows(scenario, b_runs, r_runs)
        res.rows += redis_rows(scenario, b_runs, r_runs)
    if with_history:
        h_runs = res.raw[f"history_bridge_{worker_class}"] = runs["bridge+history"]
        h = median(h_runs, "per_second")
        scenario = f"3 history, {worker_class}"
        res.rows.append(
            ratio_row(
                scenario,
                f"tasks/s over {args.history} done",
                h,
                b,
                f">= {HISTORY_TARGET}",
                h / b >= HISTORY_TARGET,
                note="the 'plain RQ' column here is bridge on an empty database",
            )
        )
        res.rows.append(
            ratio_row(
                scenario,
                "dispatcher CPU ms/task",
                median(h_runs, "cpu_ms_dispatcher"),
                median(b_runs, "cpu_ms_dispatcher"),
                note="CPU time is less sensitive than wall time to other load on the machine",
            )
        )
        for history, plan in sorted(env.plans.items()):
            res.rows.append(
                Row(
                    scenario,
                    f"PostgreSQL plans, {history.removeprefix('h')} done",
                    None,
                    target="(info)",
                    note=plan,
                )
            )


def chain(env: Env, res: Results, worker_class: str) -> None:
    """Scenario 2: a chain of ``--chain`` noops, 1 worker, against RQ's ``depends_on``."""
    links = env.args.chain
    print(f"[2] dependency chain, {worker_class}: {links} links, 1 worker", file=sys.stderr)
    runs = rounds(
        env,
        [
            ("bridge", lambda: measure.bridge_chain(env, links, worker_class)),
            ("rq", lambda: measure.rq_chain(env, links, worker_class)),
        ],
    )
    b_runs = res.raw[f"chain_bridge_{worker_class}"] = runs["bridge"]
    r_runs = res.raw[f"chain_rq_{worker_class}"] = runs["rq"]
    b, r = median(b_runs, "ms_per_link"), median(r_runs, "ms_per_link")
    scenario = f"2 chain, {worker_class}"
    target = CHAIN_TARGET[env.databases.backend]
    res.rows.append(
        ratio_row(
            scenario,
            f"ms/link ({links} links)",
            b,
            r,
            f"<= {target}",
            b / r <= target,
            note="processes started -> last link done, / links (start-up included);"
            f" {paired_ratios(b_runs, r_runs, 'ms_per_link')}",
        )
    )
    res.rows += quiet_row(scenario, "ms/link, quiet runs", b_runs, r_runs, "ms_per_link")
    res.rows.append(
        ratio_row(
            scenario,
            "ms/link, own timestamps",
            median(b_runs, "span_ms_per_link"),
            median(r_runs, "span_ms_per_link"),
            note="first task's start -> last task's end as the tasks/jobs record them (warm)",
        )
    )
    res.rows.append(
        ratio_row(
            scenario,
            "s to first done",
            median(b_runs, "first_done_seconds"),
            median(r_runs, "first_done_seconds"),
            note="start-up: processes started -> first link seen done",
        )
    )
    res.rows += redis_rows(scenario, b_runs, r_runs)


def bulk_graph_file(env: Env) -> Path:
    """The bulk graph file, written by scenario 4 (or 5b when 4 does not run)."""
    return env.scratch / "bulk-graph.json"


def bulk(env: Env, res: Results) -> None:
    """Scenario 4: adding ``--bulk`` tasks in layers, CLI and in process, vs enqueue_many."""
    args = env.args
    graph_file = bulk_graph_file(env)
    graph_file.write_text(json.dumps(layered_graph(args.bulk)))
    print(f"[4] bulk add: {args.bulk} tasks, layered graph", file=sys.stderr)
    specs = graph.parse_graph(graph_file.read_text(), str(graph_file))
    count = {"cli": 0}

    def cli() -> Run:
        count["cli"] += 1
        keep = count["cli"] == args.repeat and "memory" in args.only
        keep = keep and args.memory_graph == args.bulk
        numbers, db = measure.bridge_bulk_cli(env, graph_file, args.bulk, keep)
        if keep:
            env.loaded_db = db  # scenario 5b dispatches it
        return numbers

    runs = rounds(
        env,
        [
            ("bridge add --file", cli),
            ("store.add_tasks", lambda: measure.bridge_bulk_store(env, specs)),
            ("rq enqueue_many", lambda: measure.rq_bulk(env, args.bulk)),
        ],
    )
    res.raw["bulk_cli"] = runs["bridge add --file"]
    res.raw["bulk_store"] = runs["store.add_tasks"]
    res.raw["bulk_rq"] = runs["rq enqueue_many"]
    c, s, r = (median(x, "per_second") for x in runs.values())
    scenario = "4 bulk add"
    res.rows.append(
        ratio_row(
            scenario,
            f"tasks/s, CLI ({args.bulk})",
            c,
            r,
            f">= {BULK_TARGET}",
            c / r >= BULK_TARGET,
            note="`bridge add --file` subprocess end to end vs prepare_data+enqueue_many",
        )
    )
    res.rows.append(
        ratio_row(
            scenario,
            "tasks/s, store.add_tasks",
            s,
            r,
            note="in process: one transaction, commit included, specs already parsed",
        )
    )
    res.rows.append(
        Row(
            scenario,
            "CLI peak RSS MB",
            median(res.raw["bulk_cli"], "peak_rss_kb") / 1024,
            target="(info)",
            note=f"`bridge add --file` of {args.bulk} tasks: VmHWM polled every 20 ms",
        )
    )


def memory(env: Env, res: Results) -> None:
    """Scenario 5: the dispatcher's peak RSS, a graph run to the end and a big one loaded."""
    args, rows, raw = env.args, res.rows, res.raw
    worker_class = args.worker_classes[0]
    graph_file = bulk_graph_file(env)
    if args.memory_tasks > 0:
        print(f"[5a] memory: {args.memory_tasks}-task layered graph to completion", file=sys.stderr)
        specs = [graph.spec_from_mapping(t) for t in layered_graph(args.memory_tasks)]
        m = raw["memory_complete"] = measure.bridge_memory_complete(env, specs, worker_class)
        mb = m["hwm_kb"] / 1024
        rows.append(
            Row(
                "5 memory",
                f"dispatcher MB, {args.memory_tasks} run",
                mb,
                target=f"<= {MEMORY_LIMIT_MB:g} MB",
                verdict=verdict(0 < mb <= MEMORY_LIMIT_MB),
                note=f"VmHWM once the whole graph was done ({m['seconds']:.1f}s from start,"
                f" {m['per_second']:.0f} tasks/s)",
            )
        )
    if args.memory_seconds > 0:
        print(
            f"[5b] memory: {args.memory_graph}-task graph loaded, dispatched for"
            f" {args.memory_seconds:g}s",
            file=sys.stderr,
        )
        loaded, env.loaded_db = env.loaded_db, None
        if loaded is None:  # not left by scenario 4: load the graph with the CLI
            if args.memory_graph != args.bulk or not graph_file.exists():
                graph_file.write_text(json.dumps(layered_graph(args.memory_graph)))
            raw["memory_graph_add"], loaded = measure.bridge_bulk_cli(
                env, graph_file, args.memory_graph, keep=True
            )
        m = raw["memory_bounded"] = measure.bridge_memory_bounded(
            env, loaded, args.memory_graph, args.memory_seconds, worker_class
        )
        mb = m["hwm_kb"] / 1024
        rows.append(
            Row(
                "5 memory",
                f"dispatcher MB, {args.memory_graph} loaded",
                mb,
                target=f"<= {MEMORY_LIMIT_MB:g} MB",
                verdict=verdict(0 < mb <= MEMORY_LIMIT_MB),
                note=f"VmHWM {m['seconds']:.1f}s after start (ready after"
                f" {m['startup_seconds']:.1f}s); {m['done']} of {m['tasks']} done by then",
            )
        )
    peaks = [
        r.get("dispatcher_hwm_kb", 0) / 1024
        for key, value in raw.items()
        if key.startswith(("throughput_bridge", "history_bridge"))
        for r in value
    ]
    if peaks:
        rows.append(
            Row(
                "5 memory",
                "dispatcher MB, scen. 1/3",
                max(peaks),
                target=f"<= {MEMORY_LIMIT_MB:g} MB",
                verdict=verdict(max(peaks) <= MEMORY_LIMIT_MB),
                note="highest dispatcher VmHWM over the throughput/history runs",
            )
        )


def pruning(env: Env, res: Results) -> None:
    """Scenario 6: throughput while the dispatcher prunes ``--prune`` old finished tasks
    (``BRIDGE_RETENTION``), against the same database with retention off, same run."""
    args = env.args
    worker_class = args.worker_classes[0]
    tasks, history = args.tasks, args.prune
    print(
        f"[6] pruning, {worker_class}: {tasks} noop tasks over {history} old finished tasks"
        " (graphs of 10), retention off / on",
        file=sys.stderr,
    )
    runs = rounds(
        env,
        [
            (
                "retention off",
                lambda: measure.bridge_pruning(env, tasks, worker_class, history, False),
            ),
            ("pruning", lambda: measure.bridge_pruning(env, tasks, worker_class, history, True)),
        ],
    )
    k_runs = res.raw[f"prune_off_{worker_class}"] = runs["retention off"]
    p_runs = res.raw[f"prune_on_{worker_class}"] = runs["pruning"]
    p, k = median(p_runs, "per_second"), median(k_runs, "per_second")
    scenario = f"6 pruning, {worker_class}"
    res.rows.append(
        ratio_row(
            scenario,
            f"tasks/s while pruning {history}",
            p,
            k,
            f">= {PRUNE_TARGET}",
            p / k >= PRUNE_TARGET,
            note="the 'plain RQ' column here is bridge on the same database with retention off;"
            f" {paired_ratios(p_runs, k_runs, 'per_second')}",
        )
    )
    res.rows.append(
        Row(
            scenario,
            "old tasks pruned in the window",
            median(p_runs, "history_pruned_in_window"),
            target="(info)",
            note=f"of {history}, between the processes' start and the last of the {tasks} done",
        )
    )
    if all("seconds_to_prune_all" in r for r in p_runs):
        res.rows.append(
            Row(
                scenario,
                "s to prune all",
                median(p_runs, "seconds_to_prune_all"),
                target="(info)",
                note="from the processes' start until no old task was left",
            )
        )
    res.rows.append(
        ratio_row(
            scenario,
            "dispatcher CPU ms/task",
            median(p_runs, "cpu_ms_dispatcher"),
            median(k_runs, "cpu_ms_dispatcher"),
            note="over the timed window; pruning's planning and deletes included",
        )
    )


SCENARIOS = ("throughput", "chain", "history", "bulk", "memory", "prune", "api")
DEFAULT_SCENARIOS = ("throughput", "chain", "history", "bulk", "memory")
"""What a plain run measures; ``--only prune`` (or a list naming it) adds scenario 6,
``--only api`` scenario 7 (``benchmarks/api.py``)."""


def run_all(env: Env, on_error: Callable[[str, Exception], Row]) -> Results:
    """Every scenario asked for; one that fails becomes an ERROR row, the others still run."""
    res = Results()
    only = env.args.only
    steps: list[tuple[str, Callable[[], None]]] = []
    for worker_class in env.args.worker_classes:
        if {"throughput", "history"} & only:
            steps.append(
                (f"1 throughput, {worker_class}", _bind(throughput, env, res, worker_class))
            )
        if "chain" in only:
            steps.append((f"2 chain, {worker_class}", _bind(chain, env, res, worker_class)))
    if "bulk" in only:
        steps.append(("4 bulk add", lambda: bulk(env, res)))
    if "memory" in only:
        steps.append(("5 memory", lambda: memory(env, res)))
    if "prune" in only:
        steps.append(("6 pruning", lambda: pruning(env, res)))
    if "api" in only:
        from benchmarks.api import api

        steps.append(("7 api", lambda: api(env, res)))
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # a crash of bridge or RQ is a result too: report, go on
            res.rows.append(on_error(name, exc))
    return res


def _bind(
    fn: Callable[[Env, Results, str], None], env: Env, res: Results, worker_class: str
) -> Callable[[], None]:
    return lambda: fn(env, res, worker_class)
