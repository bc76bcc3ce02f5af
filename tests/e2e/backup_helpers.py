"""Helpers of the backup and restore tests: a database in every state, and a canonical
dump of every table to compare databases across backends."""

import gzip
import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from bridge import graph, store
from bridge.messages import Report
from bridge.states import ReportKind
from bridge.store.pools import set_pool
from bridge.store.runs import create_run
from bridge.store.schedules import add_schedule

NOT_DUMPED = {"leases", "alembic_version"}
"""Tables a backup leaves out on purpose."""


def canonical(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (but leases and alembic_version), sorted: two databases
    hold the same data exactly when these are equal. Values keep their Python types, so
    ``'1'`` and ``1`` differ."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = sorted(set(inspect(conn).get_table_names()) - NOT_DUMPED)
            return {
                table: sorted(
                    (
                        tuple(sorted(row._mapping.items()))
                        for row in conn.execute(text(f"SELECT * FROM {table}"))
                    ),
                    key=repr,
                )
                for table in tables
            }
    finally:
        engine.dispose()


def fill_every_state(url: str, prefix: str = "") -> None:
    """Tasks in every state, edges, events (retries, ignored reports), slots, odd text.

    Built in-process with the store's own functions, as a dispatcher would: done, failed,
    failed-and-waiting-to-retry, cancelled, queued, working, available and blocked.
    """
    engine = store.open_engine(url)
    p = prefix
    try:
        with store.writing(engine) as session:
            store.add_tasks(
                session=session,
                specs=[
                    graph.make_spec(task_id=f"{p}done", description="déjà vu ✓\nline two"),
                    graph.make_spec(task_id=f"{p}failed", kind="fail"),
                    graph.make_spec(task_id=f"{p}retrying", max_attempts=3, timeout=30),
                    graph.make_spec(task_id=f"{p}cancelled", priority=5),
                    graph.make_spec(task_id=f"{p}queued", payload={"n": 1, "s": "x\ty"}),
                    graph.make_spec(task_id=f"{p}working", payload=[1, 2.5, None]),
                    graph.make_spec(task_id=f"{p}child", dependencies=[f"{p}done", f"{p}failed"]),
                    graph.make_spec(task_id=f"{p}waiting", dependencies=[f"{p}queued"]),
                ],
            )
        with store.writing(engine) as session:
            store.cancel_task(session=session, task_id=f"{p}cancelled")
            store.reset_slots(session=session, slots=8)
            sent = {d.task_id: d for d in store.claim_ready(session=session, slots=8)}
        reports = [
            Report(
                f"{p}done",
                sent[f"{p}done"].attempt,
                ReportKind.STARTED,
                sent[f"{p}done"].job_id,
                "w1",
            ),
            Report(
                f"{p}done",
                sent[f"{p}done"].attempt,
                ReportKind.SUCCEEDED,
                sent[f"{p}done"].job_id,
                "w1",
                output=json.dumps({"answer": 42, "text": "ünïcode"}),
            ),
            Report(
                f"{p}failed",
                sent[f"{p}failed"].attempt,
                ReportKind.FAILED,
                sent[f"{p}failed"].job_id,
                "w2",
                error="RuntimeError: boom",
                traceback="Traceback...\n  line\n",
            ),
            Report(
                f"{p}retrying",
                sent[f"{p}retrying"].attempt,
                ReportKind.FAILED,
                sent[f"{p}retrying"].job_id,
                "w2",
                error="ValueError: try again",
            ),
            Report(
                f"{p}working",
                sent[f"{p}working"].attempt,
                ReportKind.STARTED,
                sent[f"{p}working"].job_id,
                "w1",
            ),
            Report(
                f"{p}working",
                sent[f"{p}working"].attempt,
                ReportKind.LOG,
                sent[f"{p}working"].job_id,
                "w1",
                lines=json.dumps([["2026-11-28T00:00:00+00:00", "info", "half way ✓"]]),
            ),
            Report(f"{p}done", 999, ReportKind.SUCCEEDED, "stale-job", "w9", output="1"),
        ]
        with store.writing(engine) as session:
            store.apply_reports(session=session, reports=reports)
        # The tables runs brought: a run, a pool, a schedule (task_logs came from the report)
        with store.writing(engine) as session:
            create_run(session=session, name=f"{p}nightly", scoped=True)
            set_pool(session=session, name=f"{p}gpu", slots=2)
            add_schedule(
                session=session,
                name=f"{p}hourly",
                cron="0 * * * *",
                timezone="Europe/Paris",
                graph_json=json.dumps([{"id": "tick"}]),
                catch_up=False,
                next_due="2026-11-28T01:00:00+00:00",
            )
    finally:
        engine.dispose()


def lines(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as source:
        return [json.loads(line) for line in source]


def write_lines(path: Path, items: list[Any], *, raw: list[bytes] | None = None) -> None:
    """A backup file made of these items (or raw lines), compressed, as given."""
    data = (
        raw
        if raw is not None
        else [
            (json.dumps(i, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            for i in items
        ]
    )
    with gzip.open(path, "wb") as out:
        out.write(b"".join(data))
