"""The chaos test's judge: a pure function from what happened to the rules it broke.

Its input is everything the run left behind: the ``tasks``, ``task_events``,
``task_edges`` and active ``worker_slots`` rows, the handler journal (one JSON
line per handler start and end, see ``chaos_handlers``) and the fault log (one
JSON line per fault the driver applied). :func:`check` reads nothing itself, so
its unit tests feed it hand-made histories; :func:`read_history` is the only
part that touches files.

The rules (issue 7, section 5b):

- ``final``: every task ends done, failed or cancelled (a task still
  ``available`` only because a dependency ended failed or cancelled is blocked,
  which is final for it).
- ``false-failure``: no attempt whose handler returned within the task's
  timeout is recorded as a failure, unless its kind is designed to fail or its
  worker really was killed or paused past the heartbeat limit while it ran (or
  Redis restarted meanwhile, losing its heartbeat and job).
- ``superseded-start``: no handler starts for attempt k after the event that
  re-dispatched the task as a later attempt (or cancelled attempt k).
- ``overlap``: no two runs of a task overlap in time, unless the worker of the
  earlier one was killed, or paused past the heartbeat limit, before the overlap
  ended (or Redis restarted between the two starts).
- ``slots``: active slots name exactly the tasks in flight.
- ``phantom-done``: an attempt recorded done had a handler run of that attempt that
  returned (a report from another database, or from a run before ``clean`` reused
  the id, completes nothing).
- ``exited``: no running dispatcher or worker exits on its own (the driver logs each
  exit before restarting it as a supervisor would; one that exits within seconds of
  its start, e.g. while Redis is down, is logged ``exited-at-start`` and allowed);
  the driver's own problems arrive as ``driver`` faults and are reported too.
"""

import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FINAL = frozenset({"done", "failed", "cancelled"})
IN_FLIGHT = frozenset({"queued", "working"})
DESIGNED_TO_FAIL = frozenset({"chaos_fail"})
SLACK = 0.1
"""Seconds of tolerance between the journal's and the database's clocks (one machine:
only the gap between taking a timestamp and writing it)."""


@dataclass(frozen=True)
class Violation:
    rule: str
    task: str | None
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.task or '-'}: {self.message}"


@dataclass
class History:
    """What a run left behind; times in the journal and fault log are epoch seconds,
    event times are the store's UTC text."""

    tasks: Mapping[str, Mapping[str, Any]]
    """id -> status, attempts, kind, max_attempts, timeout."""
    events: Sequence[Mapping[str, Any]]
    """In order: task_id, from, to, attempt, at, detail."""
    journal: Sequence[Mapping[str, Any]]
    """Handler lines: event (start/end), task, job, attempt, pid, ppid, t, ok."""
    faults: Sequence[Mapping[str, Any]] = ()
    """kind (stop/kill/lock/redis_restart/cancel/retry), role, pids, start, end."""
    edges: Sequence[tuple[str, str]] = ()
    """(task, depends_on)."""
    active_slots: Sequence[str | None] = ()
    """The task id of each active slot."""


@dataclass
class Run:
    """One handler run: its start line and, if it ended, its end line."""

    task: str
    attempt: int | None
    pid: int | None
    ppid: int | None
    start: float
    end: float | None = None
    ok: bool | None = None
    killed_at: float | None = None

    @property
    def until(self) -> float:
        """When it stopped running: its end, the kill of its worker, or never."""
        if self.end is not None:
            return self.end
        return self.killed_at if self.killed_at is not None else math.inf

    def pids(self) -> set[int]:
        return {p for p in (self.pid, self.ppid) if p}


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    excused: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def summary(self, limit: int = 25) -> str:
        """A short message: the count per rule, then the first ``limit`` violations."""
        if not self.violations:
            return "no violations"
        counts: dict[str, int] = defaultdict(int)
        for v in self.violations:
            counts[v.rule] += 1
        head = ", ".join(f"{rule} x{n}" for rule, n in sorted(counts.items()))
        lines = [f"{len(self.violations)} violation(s): {head}"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)


def epoch(moment: str | float) -> float:
    """A store timestamp (UTC text) as seconds since the epoch."""
    if isinstance(moment, int | float):
        return float(moment)
    text = moment.replace("T", " ").rstrip("Z")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


def runs_of(journal: Iterable[Mapping[str, Any]], faults: Sequence[Mapping[str, Any]]) -> list[Run]:
    """Pair each start line with its end line (same task, attempt and pid)."""
    runs: list[Run] = []
    open_runs: dict[tuple, Run] = {}
    for line in sorted(journal, key=lambda x: (x.get("t", 0.0), x.get("event") != "start")):
        key = (line.get("task"), line.get("attempt"), line.get("pid"), line.get("job"))
        if line.get("event") == "start":
            run = Run(
                line.get("task"), line.get("attempt"), line.get("pid"), line.get("ppid"), line["t"]
            )
            runs.append(run)
            open_runs[key] = run
        elif line.get("event") == "end" and key in open_runs:
            run = open_runs.pop(key)
            run.end, run.ok = line["t"], bool(line.get("ok"))
    for run in runs:
        if run.end is None:
            kills = [
                f["start"]
                for f in faults
                if f.get("kind") == "kill"
                and run.pids() & set(f.get("pids", ()))
                and f["start"] >= run.start - SLACK
            ]
            run.killed_at = min(kills, default=None)
    return runs


def _worker_fault(
    run: Run, faults: Sequence[Mapping[str, Any]], until: float, ttl: float
) -> str | None:
    """Why the worker of ``run`` may rightly be presumed dead before ``until``, if it may."""
    for f in faults:
        if not run.pids() & set(f.get("pids", ())):
            continue
        start, end = f["start"], f.get("end") or f["start"]
        if f.get("kind") == "kill" and run.start - SLACK <= start <= until + SLACK:
            return f"its worker was killed at {start:.2f}"
        if (
            f.get("kind") == "stop"
            and end - start > ttl
            and start <= until + SLACK
            and end >= run.start - SLACK
        ):
            return f"its worker was paused {end - start:.1f}s (> {ttl:g}s)"
    return None


def _redis_restart(faults: Sequence[Mapping[str, Any]], since: float, until: float) -> str | None:
    for f in faults:
        if f.get("kind") == "redis_restart" and since - SLACK <= f["start"] <= until + SLACK:
            return f"Redis restarted at {f['start']:.2f}"
    return None


def check(
    history: History,
    *,
    heartbeat_ttl: float,
    designed_to_fail: frozenset[str] = DESIGNED_TO_FAIL,
) -> Report:
    """Every rule of the module docstring, over one run's history.

    ``heartbeat_ttl``: a worker paused longer than this may rightly be presumed dead.
    A heartbeat renewed every ``HEARTBEAT_EVERY`` seconds can expire after a pause of
    ``HEARTBEAT_TTL - HEARTBEAT_EVERY``, so that is what the chaos test passes.
    """
    report = Report()
    runs = runs_of(history.journal, history.faults)
    unknown = [r for r in runs if r.attempt is None]
    if unknown:  # loud: the attempt-level rules would silently check less
        report.violations.append(
            Violation(
                "journal",
                unknown[0].task,
                f"{len(unknown)} handler run(s) journaled without an attempt: teach"
                " chaos_handlers._job_fields where the job now carries it",
            )
        )
    _check_final(history, report)
    _check_false_failures(history, runs, report, heartbeat_ttl, designed_to_fail)
    _check_superseded(history, runs, report)
    _check_overlaps(history, runs, report, heartbeat_ttl)
    _check_slots(history, report)
    _check_phantoms(history, runs, report)
    for f in history.faults:
        if f.get("kind") in ("exited", "driver"):
            report.violations.append(
                Violation(f["kind"], None, f"{f.get('role')} {f.get('pids')}: {f.get('detail')}")
            )
    return report


def _check_final(history: History, report: Report) -> None:
    deps: dict[str, list[str]] = defaultdict(list)
    for task, dep in history.edges:
        deps[task].append(dep)
    status = {t: row["status"] for t, row in history.tasks.items()}

    def blocked(task: str, seen: frozenset[str] = frozenset()) -> bool:
        for dep in deps[task]:
            if dep in seen:
                continue
            if status.get(dep) in ("failed", "cancelled"):
                return True
            if status.get(dep) == "available" and blocked(dep, seen | {task}):
                return True
        return False

    for task, row in sorted(history.tasks.items()):
        if row["status"] in FINAL:
            continue
        if row["status"] == "available" and blocked(task):
            report.blocked.append(task)
            continue
        report.violations.append(
            Violation("final", task, f"ended {row['status']} (attempt {row['attempts']})")
        )


def _failure_events(history: History) -> list[Mapping[str, Any]]:
    """Events that record an attempt as failed: to ``failed``, or back to ``available``
    from in flight (a failed attempt with attempts left)."""
    return [
        e
        for e in history.events
        if e["to"] == "failed" or (e["to"] == "available" and e["from"] in IN_FLIGHT)
    ]


def _check_false_failures(
    history: History,
    runs: Sequence[Run],
    report: Report,
    ttl: float,
    designed_to_fail: frozenset[str],
) -> None:
    for event in _failure_events(history):
        task = event["task_id"]
        row = history.tasks.get(task, {})
        if row.get("kind") in designed_to_fail:
            continue
        timeout = row.get("timeout") or math.inf
        succeeded = [
            r
            for r in runs
            if r.task == task
            and r.ok
            and r.end is not None
            and r.end - r.start <= timeout
            and (r.attempt is None or r.attempt == event["attempt"])
        ]
        for run in succeeded:
            excuse = _worker_fault(run, history.faults, run.end, ttl) or _redis_restart(
                history.faults, run.start, epoch(event["at"])
            )
            detail = (event.get("detail") or "").splitlines()[0][:120]
            if excuse:
                report.excused.append(f"false-failure {task} a{event['attempt']}: {excuse}")
                continue
            report.violations.append(
                Violation(
                    "false-failure",
                    task,
                    f"attempt {event['attempt']} recorded {event['to']} ({detail!r}) although"
                    f" its handler (pid {run.pid}) succeeded in {run.end - run.start:.1f}s",
                )
            )
            break


def _check_superseded(history: History, runs: Sequence[Run], report: Report) -> None:
    ends: dict[tuple[str, int], float] = {}
    for event in history.events:
        task, attempt, at = event["task_id"], event["attempt"], epoch(event["at"])
        if event["to"] == "queued" and not (event.get("detail") or "").startswith("ignored"):
            for earlier in range(1, attempt):
                ends.setdefault((task, earlier), at)
        if event["to"] == "cancelled":
            ends.setdefault((task, attempt), at)
    for run in runs:
        if run.attempt is None:
            continue
        superseded = ends.get((run.task, run.attempt))
        if superseded is not None and run.start > superseded + SLACK:
            report.violations.append(
                Violation(
                    "superseded-start",
                    run.task,
                    f"attempt {run.attempt} started (pid {run.pid}) {run.start - superseded:.1f}s"
                    " after it was superseded or cancelled",
                )
            )


def _check_overlaps(history: History, runs: Sequence[Run], report: Report, ttl: float) -> None:
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_task[run.task].append(run)
    for task, task_runs in sorted(by_task.items()):
        task_runs.sort(key=lambda r: r.start)
        for i, first in enumerate(task_runs):
            for second in task_runs[i + 1 :]:
                if second.start >= first.until - SLACK:
                    continue
                overlap_end = min(first.until, second.until)
                excuse = _worker_fault(first, history.faults, overlap_end, ttl) or _redis_restart(
                    history.faults, first.start, second.start
                )
                if excuse:
                    report.excused.append(f"overlap {task}: {excuse}")
                    continue
                until = "still running" if math.isinf(first.until) else f"until {first.until:.2f}"
                report.violations.append(
                    Violation(
                        "overlap",
                        task,
                        f"attempt {second.attempt} (pid {second.pid}) started at"
                        f" {second.start:.2f} while attempt {first.attempt} (pid {first.pid})"
                        f" ran ({until})",
                    )
                )


def _check_slots(history: History, report: Report) -> None:
    flying = sorted(t for t, row in history.tasks.items() if row["status"] in IN_FLIGHT)
    held = sorted(t or "<none>" for t in history.active_slots)
    if flying != held:
        report.violations.append(
            Violation(
                "slots",
                None,
                f"{len(held)} active slot(s) {held[:10]} but {len(flying)} task(s) in flight"
                f" {flying[:10]}",
            )
        )


def _check_phantoms(history: History, runs: Sequence[Run], report: Report) -> None:
    returned = {(r.task, r.attempt) for r in runs if r.ok}
    for event in history.events:
        if event["to"] != "done" or event["from"] == "done":
            continue
        task, attempt = event["task_id"], event["attempt"]
        if (task, attempt) not in returned and (task, None) not in returned:
            report.violations.append(
                Violation(
                    "phantom-done",
                    task,
                    f"attempt {attempt} recorded done but no handler run of it returned",
                )
            )


# ---------------------------------------------------------------------------- reading


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines of a file; a torn last line (a process killed mid-write) is skipped."""
    if not path.exists():
        return []
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def read_history(db: Path, journal: Path, faults: Path) -> History:
    """Everything :func:`check` needs, from the database file and the two logs."""
    with sqlite3.connect(db, timeout=30) as conn:
        task_rows = conn.execute(
            "SELECT id, status, attempts, kind, max_attempts, timeout FROM tasks"
        ).fetchall()
        event_rows = conn.execute(
            "SELECT task_id, from_status, to_status, attempt, at, detail FROM task_events"
            " ORDER BY id"
        ).fetchall()
        edges = conn.execute("SELECT task_id, depends_on FROM task_edges").fetchall()
        slots = conn.execute("SELECT task_id FROM worker_slots WHERE active = 1").fetchall()
    keys = ("status", "attempts", "kind", "max_attempts", "timeout")
    tasks = {row[0]: dict(zip(keys, row[1:], strict=True)) for row in task_rows}
    ekeys = ("task_id", "from", "to", "attempt", "at", "detail")
    events = [dict(zip(ekeys, row, strict=True)) for row in event_rows]
    return History(
        tasks=tasks,
        events=events,
        journal=read_jsonl(journal),
        faults=read_jsonl(faults),
        edges=[tuple(e) for e in edges],
        active_slots=[s[0] for s in slots],
    )
