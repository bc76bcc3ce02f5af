"""``GET /metrics``: Prometheus text, read from the database at each scrape.

The dispatcher keeps no counters of its own in memory to export: everything it
does is a row in ``task_events`` (invariant 1). So the reports it applied, the ones
it ignored (stale, duplicate, late) and its recoveries (a task sent again, by
reason) are counted here from that table, incrementally: each scrape reads only the
events added since the previous one. Histograms of durations and queue waits come
from the latest finished tasks (bounded, ``TIMINGS``).
"""

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bridge import store, usecases
from bridge.app import App
from bridge.broker import BrokerError
from bridge.states import TaskStatus

TIMINGS = 10_000
"""Finished tasks (the latest) whose durations and queue waits feed the histograms."""
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
IN_FLIGHT = ("queued", "working")
TALLY_BATCH = 5000

router = APIRouter()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        delta = datetime.strptime(end[:26], fmt) - datetime.strptime(start[:26], fmt)
    except ValueError:
        return None
    return max(delta.total_seconds(), 0.0)


def _histogram(name: str, doc: str, samples: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["kind"])
    for kind, values in sorted(samples.items()):
        counts = []
        for bound in BUCKETS:
            counts.append((str(bound), sum(1 for v in values if v <= bound)))
        counts.append(("+Inf", len(values)))
        family.add_metric([kind], counts, sum(values))
    return family


def recovery_reason(detail: str | None) -> str:
    """A short, bounded label from an event's detail (``worker lost: ...`` -> ``worker lost``)."""
    text = (detail or "unknown").split(":", 1)[0].strip().splitlines()[0:1]
    return (text[0] if text else "unknown")[:60] or "unknown"


class EventTallies:
    """Counts over ``task_events``, brought up to date at each scrape from the last id."""

    def __init__(self) -> None:
        self.after = 0
        self.applied = 0
        self.ignored = 0
        self.recoveries: dict[str, int] = {}
        self.lock = threading.Lock()

    def update(self, app: App) -> None:
        with self.lock:
            while True:
                with store.reading(app.engine) as session:
                    rows = store.events_after(session=session, after=self.after, limit=TALLY_BATCH)
                for row in rows:
                    self.count(row)
                if rows:
                    self.after = rows[-1]["id"]
                if len(rows) < TALLY_BATCH:
                    return

    def count(self, row: dict[str, Any]) -> None:
        detail = row.get("detail") or ""
        source, target = row.get("from_status"), row.get("to_status")
        if detail.startswith("ignored:"):
            self.ignored += 1
        elif source in IN_FLIGHT and target == "queued":
            reason = recovery_reason(detail)
            self.recoveries[reason] = self.recoveries.get(reason, 0) + 1
        elif source in IN_FLIGHT and target in ("working", "done", "failed", "available"):
            self.applied += 1


class BridgeCollector(Collector):
    def __init__(self, app: App, live: usecases.LiveCounts | None = None) -> None:
        self.app = app
        self.live = live
        self.tallies = EventTallies()

    def collect(self) -> Iterator[Any]:
        app = self.app
        summary = usecases.summary(app, live=self.live)
        tasks = GaugeMetricFamily("bridge_tasks", "Tasks by status", labels=["status"])
        for status in TaskStatus:
            tasks.add_metric([status.value], summary.counts.get(status.value, 0))
        yield tasks
        yield GaugeMetricFamily(
            "bridge_tasks_in_flight", "Tasks queued or working", summary.in_flight
        )
        yield GaugeMetricFamily(
            "bridge_slots", "Worker slots (tasks allowed in flight)", summary.slots
        )
        yield GaugeMetricFamily("bridge_slots_busy", "Worker slots in use", summary.slots_busy)
        yield GaugeMetricFamily("bridge_runs", "Runs recorded", summary.runs)
        if summary.queue_depth is not None:
            yield GaugeMetricFamily(
                "bridge_queue_depth", "Jobs waiting in the RQ queue", summary.queue_depth
            )
        try:
            broker = app.broker()
            workers = len(broker.workers(usecases.known_queues(app, broker)))
            yield GaugeMetricFamily(
                "bridge_workers", "RQ workers on this database's queues", workers
            )
        except BrokerError:
            pass
        live = 1 if summary.dispatcher and summary.dispatcher["live"] else 0
        yield GaugeMetricFamily(
            "bridge_dispatcher_up", "1 when a dispatcher holds a live lease", live
        )
        with store.reading(app.engine) as session:
            timings = store.recent_timings(session=session, limit=TIMINGS)
        durations: dict[str, list[float]] = {}
        waits: dict[str, list[float]] = {}
        for row in timings:
            ran = _seconds(row["started_at"], row["completed_at"])
            if ran is not None:
                durations.setdefault(row["kind"], []).append(ran)
            waited = _seconds(row["queued_at"], row["started_at"])
            if waited is not None:
                waits.setdefault(row["kind"], []).append(waited)
        yield _histogram(
            "bridge_task_duration_seconds",
            f"Run time of the latest {TIMINGS} finished tasks, by kind",
            durations,
        )
        yield _histogram(
            "bridge_task_queue_wait_seconds",
            f"Queued-to-started wait of the latest {TIMINGS} finished tasks, by kind",
            waits,
        )
        self.tallies.update(app)
        yield CounterMetricFamily(
            "bridge_reports_applied",
            "Worker reports applied (from task_events)",
            self.tallies.applied,
        )
        yield CounterMetricFamily(
            "bridge_reports_ignored",
            "Stale, duplicate or late reports ignored (from task_events)",
            self.tallies.ignored,
        )
        recoveries = CounterMetricFamily(
            "bridge_recoveries", "Tasks sent again by the dispatcher, by reason", labels=["reason"]
        )
        for reason, count in sorted(self.tallies.recoveries.items()):
            recoveries.add_metric([reason], count)
        yield recoveries


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    state = request.app.state
    if not hasattr(state, "metrics_registry"):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BridgeCollector(state.bridge, state.counts))
        state.metrics_registry = registry
    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
