"""Benchmark bridge against plain RQ on the same machine, Redis and worker class.

Run ``python benchmarks/run.py`` (``--help`` for sizes, ``--quick`` for a smoke
run). It starts its own private redis-server, gives every run a database of its own
(a temporary SQLite file, or with ``--database postgresql+psycopg://...`` a
throwaway database on that PostgreSQL server, dropped after the run), runs
every scenario ``--repeat`` times with bridge and RQ interleaved, and prints a
table of medians and ratios (bridge / plain RQ) with PASS/MISS against the
targets, the same table in markdown, and a last line ``BENCH_JSON {...}``.

The parts: ``harness`` (Redis, processes, scratch folders), ``cpu`` (CPU per
process), ``workloads`` (what is run), ``runs`` (one measured run each),
``scenarios`` (rounds and rows), ``report`` (tables and JSON), ``profiling``
(py-spy, ``--profile``). What each scenario measures: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import rq  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from benchmarks.harness import BenchError, Databases, Env  # noqa: E402
from benchmarks.report import Row, bench_json, markdown_table, noise_summary, text_table  # noqa: E402
from benchmarks.scenarios import DEFAULT_SCENARIOS, SCENARIOS, run_all  # noqa: E402
from bridge.redis_server import PrivateRedis  # noqa: E402
from bridge.settings import redact_url  # noqa: E402

WORKER_CLASSES = ("simple", "fork")
QUICK = {
    "tasks": 300,
    "chain": 30,
    "history": 2_000,
    "bulk": 2_000,
    "memory_tasks": 300,
    "memory_graph": 2_000,
    "memory_seconds": 2.0,
    "prune": 2_000,
    "fanin_samples": 5,
    "repeat": 1,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="A full run takes about 12 minutes on 2 cores (the forking worker's"
        " throughput runs most of it); --quick about 40 s.",
    )
    add = parser.add_argument
    add("--tasks", type=int, default=3_000, help="scenario 1/3: noop tasks [default: 3000]")
    add("--chain", type=int, default=300, help="scenario 2: chain length [default: 300]")
    add("--history", type=int, default=100_000, help="scenario 3: done tasks already in the DB")
    add("--bulk", type=int, default=50_000, help="scenario 4: tasks added at once")
    add("--memory-tasks", type=int, default=3_000, help="scenario 5a: graph run to the end")
    add("--memory-graph", type=int, default=100_000, help="scenario 5b: graph loaded")
    add("--memory-seconds", type=float, default=10.0, help="scenario 5b: seconds dispatched")
    add("--repeat", type=int, default=3, help="rounds per scenario (medians) [default: 3]")
    add(
        "--worker-classes",
        "--worker-class",
        default=",".join(WORKER_CLASSES),
        help="comma-separated RQ worker classes, each used on both sides (bridge:"
        " BRIDGE_WORKER_CLASS) for scenarios 1 and 2; the first one also runs 3 and 5"
        " [default: simple,fork]",
    )
    add("--slots", type=int, default=64, help="BRIDGE_SLOTS [default: 64]")
    add("--prune", type=int, default=100_000, help="scenario 6: old tasks pruned [default: 100000]")
    add("--fanin", type=int, default=1_000, help="scenario 7: inputs of the fan-in [default: 1000]")
    add(
        "--fanin-samples",
        type=int,
        default=21,
        help="scenario 7: fan-ins timed of each size (median) [default: 21]",
    )
    add(
        "--database",
        metavar="URL",
        help="where bridge's runs keep their tasks, as a SQLAlchemy URL. Default (or any"
        " sqlite: URL): a new SQLite file per run in a temporary directory. A PostgreSQL URL"
        " (postgresql+psycopg://USER@HOST:PORT/DB; postgresql:// means the same) names a"
        " server: every run gets a new database bridge_bench_<pid>_<random> made on it and dropped"
        " after the run; DB is only connected to for CREATE/DROP DATABASE, so the"
        " server's own databases are never read or written. The user must be allowed to"
        " create databases. [default: SQLite]",
    )
    add(
        "--only",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated scenarios of {', '.join(SCENARIOS)}"
        f" [default: {','.join(DEFAULT_SCENARIOS)}]",
    )
    add("--timeout", type=float, default=600.0, help="per-run time limit in seconds")
    add("--quick", action="store_true", help="small sizes and one round: a smoke run")
    add("--keep", action="store_true", help="keep scratch files and process logs")
    add("--profile", metavar="DIR", help="py-spy the dispatcher and a worker of scenario 1 runs")
    add("-v", "--verbose", action="store_true", help="print process logs on error")
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:])}
        for name, value in QUICK.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.only - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(args.only - set(SCENARIOS)))}")
    args.worker_classes = [c.strip() for c in args.worker_classes.split(",") if c.strip()]
    if not args.worker_classes or set(args.worker_classes) - set(WORKER_CLASSES):
        parser.error(f"--worker-classes takes {' and/or '.join(WORKER_CLASSES)}")
    for name in ("tasks", "chain", "bulk", "repeat", "slots", "fanin", "fanin_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.database is not None:
        try:
            backend = make_url(args.database).get_backend_name()
        except Exception:  # noqa: BLE001 - ArgumentError, ValueError: not a URL
            parser.error(f"--database: not a database URL: {redact_url(args.database)}")
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"--database takes a sqlite: or postgresql: URL, not {backend}:")
    return args


def config_of(args: argparse.Namespace, database: str) -> dict[str, object]:
    keys = ("tasks", "chain", "history", "bulk", "memory_tasks", "memory_graph")
    keys += ("memory_seconds", "prune", "repeat", "worker_classes", "slots", "quick")
    keys += ("fanin", "fanin_samples")
    return {
        **{k: getattr(args, k) for k in keys},
        "scenarios": sorted(args.only),
        "database": database,
    }


def error_row(name: str, exc: Exception) -> Row:
    print(f"{name} failed:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return Row(name, "error", None, verdict="ERROR", note=message)


def load_line() -> str:
    """``uptime``'s load averages: the machine is often shared."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load: unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    databases = Databases(args.database, scratch)
    try:
        databases.check()
        database = databases.describe()
    except BenchError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = PrivateRedis().start()
    client = redis.Redis.from_url(server.url)
    env = Env(args=args, redis=server, client=client, scratch=scratch, databases=databases)
    classes = ",".join(args.worker_classes)
    print(
        f"bridge benchmark: {database}; worker classes {classes}, BRIDGE_SLOTS={args.slots},"
        f" repeat {args.repeat}, rq {rq.__version__}, python {platform.python_version()},"
        f" {os.cpu_count()} cpu(s); {load_line()}",
        file=sys.stderr,
    )
    try:
        results = run_all(env, error_row)
    finally:
        databases.drop_all()
        client.close()
        server.stop()
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - began
    rows = sorted(results.rows, key=lambda r: r.scenario[:1])
    print()
    print(f"database: {database}")
    print(
        f"bridge vs plain RQ: worker classes {classes} (same on both sides),"
        f" BRIDGE_SLOTS={args.slots}, {args.repeat} round(s), medians; cpus={os.cpu_count()},"
        f" total {elapsed:.0f}s; {load_line()}"
    )
    print(
        f"sizes: --tasks {args.tasks} --chain {args.chain} --history {args.history}"
        f" --bulk {args.bulk} --memory-tasks {args.memory_tasks}"
        f" --memory-graph {args.memory_graph} --memory-seconds {args.memory_seconds:g}"
        + (f" --prune {args.prune}" if "prune" in args.only else "")
        + (f" --fanin {args.fanin}" if "fanin" in args.only else "")
    )
    print(text_table(rows))
    noise = noise_summary(results.raw)
    if noise:
        noisy = noise["other_cores_median"] > 0.25
        print(
            f"background: other processes used {noise['other_cores_median']:.2f} cores"
            f" (median; max {noise['other_cores_max']:.2f}) of {os.cpu_count()} during the"
            f" timed windows, steal {noise['steal_cores_median']:.2f}"
            + ("  <- NOISY: rerun on an idle machine" if noisy else "")
        )
    print()
    print("markdown (for the README's Performance section):")
    print()
    print(markdown_table(rows))
    print()
    print(bench_json(config_of(args, databases.backend), elapsed, results))
    return 1 if any(r.verdict == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
