"""Scenario 7 (``--only api``): the HTTP API of ``bridge serve``.

7a: ``GET /api/tasks?limit=100`` and ``GET /api/summary`` at 100,000 tasks against
1,000 (median latency of many requests to a real serve; target: at most 1.25x).
7b: dispatch throughput with ``bridge serve`` running and 20 SSE clients connected
on ``/api/stream``, against none (target: at least 0.9x), interleaved in rounds.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

import httpx

from benchmarks import runs as measure
from benchmarks.cpu import CpuMeter
from benchmarks.harness import BRIDGE, BenchError, Env, Processes, new_db, wait_bridge_done
from benchmarks.report import Results, median, ratio_row
from benchmarks.workloads import noop_specs, preload_bridge

LATENCY_TARGET = 1.25
SSE_TARGET = 0.9
SSE_CLIENTS = 20
REQUESTS = 60
"""Requests per route and size; the median is reported."""
Run = dict[str, float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(env: Env, procs: Processes, db, worker_class: str = "simple") -> str:  # noqa: ANN001
    port = _free_port()
    proc = procs.start(
        "serve", [*BRIDGE, "serve", "--port", str(port)], env.bridge_env(db, worker_class)
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"bridge serve exited\n{procs.logs()}")
        try:
            httpx.get(url + "/healthz", timeout=5)
            return url
        except httpx.TransportError:
            time.sleep(0.1)
    raise BenchError("bridge serve did not answer within 120s")


def _median_ms(client: httpx.Client, path: str) -> float:
    for _ in range(5):  # warm up (the first summary counts the tasks once)
        client.get(path).raise_for_status()
    times = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def api_latency(env: Env, tasks: int) -> Run:
    with env.sandbox(f"api-latency-{tasks}") as (_folder, procs):
        db, engine = new_db(env)
        preload_bridge(engine, noop_specs(tasks, measure.NOOP_PREFIX))
        engine.dispose()
        url = _serve(env, procs, db)
        with httpx.Client(base_url=url, timeout=60) as client:
            return {
                "tasks_ms": _median_ms(client, "/api/tasks?limit=100"),
                "summary_ms": _median_ms(client, "/api/summary"),
            }


def _follow(url: str, stop: threading.Event, seen: list[int]) -> None:
    try:
        with httpx.stream("GET", url + "/api/stream", timeout=None) as response:
            for line in response.iter_lines():
                if line.startswith("id: "):
                    seen.append(1)
                if stop.is_set():
                    return
    except httpx.HTTPError:
        return


def throughput_with_sse(env: Env, tasks: int, worker_class: str, clients: int) -> Run:
    """As scenario 1's bridge run, with ``bridge serve`` and ``clients`` SSE streams open."""
    with env.sandbox(f"api-sse-{worker_class}") as (_folder, procs):
        db, engine = new_db(env)
        preload_bridge(engine, noop_specs(tasks, measure.NOOP_PREFIX))
        engine.dispose()
        url = _serve(env, procs, db, worker_class)
        stop = threading.Event()
        seen: list[int] = []
        readers = [
            threading.Thread(target=_follow, args=(url, stop, seen), daemon=True)
            for _ in range(clients)
        ]
        for reader in readers:
            reader.start()
        time.sleep(1.0)  # connected
        meter = CpuMeter({"redis": env.redis_pid()})
        t0 = time.perf_counter()
        dispatcher, workers = measure._start_bridge(env, procs, db, 2, worker_class, meter)
        _first, last = wait_bridge_done(
            db, [dispatcher, *workers], procs, env.args.timeout, prefix=measure.NOOP_PREFIX
        )
        time.sleep(1.0)  # the streams catch up
        stop.set()
        procs.stop_all()
        meter.stop()
    return {"per_second": tasks / (last - t0), "sse_events_seen": float(len(seen))}


def api(env: Env, res: Results) -> None:
    args = env.args
    small, large = (100, 10_000) if args.quick else (1_000, 100_000)
    print(f"[7] api: latency at {small} vs {large} tasks; throughput with SSE", file=sys.stderr)
    steps: list[tuple[str, Callable[[], Run]]] = [
        ("small", lambda: api_latency(env, small)),
        ("large", lambda: api_latency(env, large)),
    ]
    from benchmarks.scenarios import rounds

    latency = rounds(env, steps)
    res.raw["api_latency_small"], res.raw["api_latency_large"] = latency["small"], latency["large"]
    for key, route in (
        ("tasks_ms", "GET /api/tasks?limit=100"),
        ("summary_ms", "GET /api/summary"),
    ):
        big, little = median(latency["large"], key), median(latency["small"], key)
        res.rows.append(
            ratio_row(
                "7 api",
                f"{route} ms at {large} vs {small}",
                big,
                little,
                f"<= {LATENCY_TARGET}",
                big / little <= LATENCY_TARGET,
                note=f"median of {REQUESTS} requests to a real serve; the 'plain RQ' column"
                f" is bridge at {small} tasks",
            )
        )
    worker_class = args.worker_classes[0]
    tasks = args.tasks
    sse = rounds(
        env,
        [
            ("plain", lambda: measure.bridge_throughput(env, tasks, worker_class)),
            ("sse", lambda: throughput_with_sse(env, tasks, worker_class, SSE_CLIENTS)),
        ],
    )
    res.raw["api_sse_plain"], res.raw["api_sse"] = sse["plain"], sse["sse"]
    with_sse, without = median(sse["sse"], "per_second"), median(sse["plain"], "per_second")
    res.rows.append(
        ratio_row(
            "7 api",
            f"tasks/s ({tasks}) with serve + {SSE_CLIENTS} SSE clients",
            with_sse,
            without,
            f">= {SSE_TARGET}",
            with_sse / without >= SSE_TARGET,
            note=f"{worker_class} workers; the 'plain RQ' column is bridge without serve;"
            f" events seen by the clients: {median(sse['sse'], 'sse_events_seen'):.0f}",
        )
    )
