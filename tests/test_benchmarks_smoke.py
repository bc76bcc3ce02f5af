"""The benchmark runs end to end in its quick mode and reports what the README says it does.

Timing values are not checked (the machine is shared); the shape of the report is.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_throughput_reports_rates_ratio_and_cpu_per_process(tmp_path):
    # Given the benchmark in quick mode, throughput only, SimpleWorker on both sides
    argv = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"]
    argv += ["--only", "throughput", "--worker-classes", "simple", "--tasks", "100"]
    # When it runs end to end (its own private Redis, real bridge and RQ processes)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    # Then it succeeds and its last line is the machine-readable report
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("BENCH_JSON ")
    report = json.loads(last.removeprefix("BENCH_JSON "))
    assert report["config"]["quick"] is True
    assert report["config"]["repeat"] == 1
    assert report["config"]["worker_classes"] == ["simple"]
    # And the throughput row compares bridge with plain RQ against the 0.8 target
    rows = {(r["scenario"], r["metric"]): r for r in report["results"]}
    main = rows[("1 throughput, simple", "tasks/s (100)")]
    assert main["bridge"] > 0 and main["rq"] > 0
    assert main["ratio"] == main["bridge"] / main["rq"]
    assert main["target"] == ">= 0.8" and main["verdict"] in ("PASS", "MISS")
    # And CPU per task is reported for each process of both sides
    for process in ("dispatcher", "worker1", "worker2", "redis", "client"):
        assert ("1 throughput, simple", f"CPU ms/task, {process}") in rows
    (bridge_run,) = report["runs"]["throughput_bridge_simple"]
    (rq_run,) = report["runs"]["throughput_rq_simple"]
    for key in ("cpu_ms_dispatcher", "cpu_ms_worker1", "cpu_ms_worker2", "cpu_ms_redis"):
        assert bridge_run[key] > 0, key
    for key in ("cpu_ms_worker1", "cpu_ms_worker2", "cpu_ms_redis"):
        assert rq_run[key] > 0, key
    for run in (bridge_run, rq_run):
        assert 0 < run["first_done_seconds"] <= run["seconds"]
    # And the same table is printed in markdown, ready for the README
    assert "| scenario | metric | bridge | plain RQ | ratio | target | verdict |" in result.stdout
    assert "| 1 throughput, simple | tasks/s (100) |" in result.stdout


def test_redis_command_row_survives_a_command_only_some_rounds_sent():
    # Given rounds where a command (a script load) appears in one round only
    sys.path.insert(0, str(ROOT))
    from benchmarks.scenarios import redis_rows

    bridge_runs = [
        {"redis_calls_per_task": 3.0, "redis_cmd_get": 2.0, "redis_cmd_script_load": 1.0},
        {"redis_calls_per_task": 2.0, "redis_cmd_get": 2.0},
        {"redis_calls_per_task": 2.0, "redis_cmd_get": 2.0},
    ]
    rq_runs = [{"redis_calls_per_task": 1.0, "redis_cmd_get": 1.0}] * 3
    # When the row is built
    (row,) = redis_rows("1 throughput, simple", bridge_runs, rq_runs)
    # Then the medians count the missing command as 0 per task
    assert (row.bridge, row.rq, row.ratio) == (2.0, 1.0, 2.0)
    assert "get 2.00 script_load 0.00" in row.note


def test_quick_run_on_postgresql_uses_throwaway_databases_and_drops_them(tmp_path, pg_database):
    # Given a PostgreSQL server (the test session's), named by a URL of its maintenance db
    import psycopg
    from postgres import sqlalchemy_url

    server = sqlalchemy_url(pg_database.server_url)
    argv = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--database", server]
    argv += ["--only", "throughput,history", "--worker-classes", "simple"]
    argv += ["--tasks", "100", "--history", "500"]
    # When the benchmark runs on it end to end
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    out, err = proc.communicate(timeout=120)
    # Then it succeeds and says it ran on PostgreSQL
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "database: PostgreSQL" in out
    report = json.loads(out.strip().splitlines()[-1].removeprefix("BENCH_JSON "))
    assert report["config"]["database"] == "postgresql"
    rows = {(r["scenario"], r["metric"]): r for r in report["results"]}
    main = rows[("1 throughput, simple", "tasks/s (100)")]
    assert main["bridge"] > 0 and main["rq"] > 0
    assert rows[("3 history, simple", "tasks/s over 500 done")]["bridge"] > 0
    # And the server's work for bridge is counted, and the planner's choices shown
    (bridge_run,) = report["runs"]["throughput_bridge_simple"]
    assert bridge_run["cpu_ms_postgres"] > 0
    plan = rows[("3 history, simple", "PostgreSQL plans, 500 done")]["note"]
    assert "ix_tasks_ready" in plan and "ix_tasks_in_flight" in plan
    # And every database it made on the server is gone
    with psycopg.connect(pg_database.server_url) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"bridge\\_bench\\_{proc.pid}\\_%",),
        ).fetchall()
    assert left == []


def test_quick_fanin_reports_both_times_and_their_ratio_against_the_target(tmp_path):
    # Given the fan-in scenario, small
    argv = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "fanin"]
    argv += ["--fanin", "50", "--fanin-samples", "3"]
    # When it runs
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    # Then it reports submit->dispatch for 1 input and for 50, and their ratio against < 5
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("BENCH_JSON "))
    rows = {r["metric"]: r for r in report["results"] if r["scenario"] == "7 fan-in"}
    one = rows["ms submit->dispatch, 1 input"]["bridge"]
    many = rows["ms submit->dispatch, 50 inputs"]["bridge"]
    ratio = rows["50-input / 1-input time"]
    assert one > 0 and many > 0
    assert ratio["ratio"] == many / one
    assert ratio["target"] == "< 5" and ratio["verdict"] in ("PASS", "MISS")
    assert len(report["runs"]["fanin_ms"]["many"]) == 3
