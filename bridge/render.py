"""How tasks, events and slots look on a terminal (rich) and as ``--json``.

Task ids, descriptions, errors and outputs are user text: they go into tables as
``rich.text.Text`` and the consoles here have markup off, so ``x[/y]`` or
``cannot open [/srv/data]`` print as written instead of being read as markup.
"""

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bridge.models import Task, TaskEvent, TaskLog, WorkerSlot
from bridge.reporting import progress_text
from bridge.states import IN_FLIGHT
from bridge.store import declared_dependencies, task_dict
from bridge.usecases import GraphProgress, Status, TaskView

STATUS_STYLE = {
    "available": "white",
    "queued": "cyan",
    "working": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def console(stderr: bool = False) -> Console:
    """A console that never reads markup from the strings it prints (user text)."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False, markup=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2), flush=True)


def json_line(data: Any) -> str:
    """One JSON object on one line (``events --follow --json``: a stream of objects)."""
    return json.dumps(data, ensure_ascii=False)


def event_dict(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "task_id": event.task_id,
        "from": event.from_status,
        "to": event.to_status,
        "attempt": event.attempt,
        "worker": event.worker,
        "at": event.at,
        "detail": event.detail,
    }


def slot_dict(slot: WorkerSlot) -> dict[str, Any]:
    return {
        "slot": slot.slot,
        "worker_id": slot.worker_id,
        "active": bool(slot.active),
        "task_id": slot.task_id,
        "updated_at": slot.updated_at,
    }


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "white"))


def _short(text: str | None, width: int = 60) -> Text:
    if not text:
        return Text("")
    line = text.splitlines()[0]
    return Text(line if len(line) <= width else line[: width - 1] + "…")


def _text(value: Any) -> Text:
    return Text("" if value is None else str(value))


def tasks_table(tasks: Sequence[Task], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("id", "status", "kind", "attempt", "worker", "deps", "output / error"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        deps = declared_dependencies(task.dependencies)
        result = task.error if task.error else task.output
        table.add_row(
            _text(task.id),
            _status(task.status),
            _text(task.kind),
            f"{task.attempts}/{task.max_attempts}" if task.max_attempts > 1 else str(task.attempts),
            _text(task.worker),
            _text("?") if isinstance(deps, str) else str(len(deps)) if deps else "",
            _short(result),
        )
    return table


def events_table(events: Sequence[TaskEvent]) -> Table:
    table = Table()
    for column in ("at", "task", "from", "to", "attempt", "worker", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(*event_row(event))
    return table


def event_row(event: TaskEvent) -> list[Text]:
    return [
        Text(event.at[:23]),
        _text(event.task_id),
        _text(event.from_status),
        _status(event.to_status),
        Text(str(event.attempt)),
        _text(event.worker),
        _short(event.detail, 80),
    ]


def event_line(event: TaskEvent) -> Text:
    """One event on one line, for ``events --follow`` (a table cannot grow)."""
    line = Text()
    for index, cell in enumerate(event_row(event)):
        if index:
            line.append("  ")
        line.append_text(cell)
    return line


def slots_table(slots: Sequence[WorkerSlot]) -> Table:
    table = Table()
    for column in ("slot", "active", "task", "worker", "updated_at"):
        table.add_column(column)
    for slot in slots:
        table.add_row(
            str(slot.slot),
            "yes" if slot.active else "no",
            _text(slot.task_id),
            _text(slot.worker_id),
            _text((slot.updated_at or "")[:23]),
        )
    return table


def task_detail(view: TaskView) -> Table:
    """``bridge show``: every field, plus why the task is where it is."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in task_dict(view.task).items():
        if key in ("dependencies", "pending_dependencies", "note", "progress", "progress_message"):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        table.add_row(key, _status(str(value)) if key == "status" else _text(value))
    if view.dependencies:
        table.add_row(
            "dependencies",
            Text(", ".join(f"{dep} ({status})" for dep, status in view.dependencies)),
        )
    table.add_row("why", Text(view.why))
    return table


def progress_line(task: Task) -> str | None:
    """``progress: 40% downloading`` for a task in flight whose handler said how far it
    is; printed under ``bridge show``'s table, on one line whatever the terminal width."""
    if task.status not in {s.value for s in IN_FLIGHT} or task.progress is None:
        return None
    return f"progress: {progress_text(task.progress, task.progress_message)}"


def log_dict(line: TaskLog) -> dict[str, Any]:
    return {
        "task_id": line.task_id,
        "attempt": line.attempt,
        "at": line.at,
        "level": line.level,
        "message": line.message,
    }


def log_line(line: TaskLog) -> str:
    """``bridge logs``: ``<at> <LEVEL> attempt N: message``."""
    return f"{line.at[:23]} {line.level} attempt {line.attempt}: {line.message}"


def stuck_lines(state: GraphProgress) -> list[str]:
    """Lines naming the failed or cancelled tasks that stop the graph."""
    lines = [
        f"{p.task_id}: {p.status}" + (f" ({p.error})" if p.error else "") for p in state.problems
    ]
    if state.blocked:
        lines.append(f"{state.blocked} task(s) wait on them; 'bridge retry ID' resumes the graph")
    return lines


def status_view(status: Status) -> Group:
    """``bridge status``: the dispatcher, the workers, the queue and the counts on one screen."""
    parts: list[Any] = []
    head = Table(show_header=False, box=None)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("database", Text(status.database))
    head.add_row("redis", Text(status.redis))
    head.add_row("queue", Text(status.queue))
    live = [lease for lease in status.dispatchers if lease.live]
    if live:
        for lease in live:
            since = f" since {lease.since} UTC" if lease.since else ""
            head.add_row(
                "dispatcher",
                Text(f"{lease.holder}{since} (lease {lease.name!r}, {lease.expires_in:g}s left)"),
            )
    else:
        lapsed = [lease for lease in status.dispatchers if not lease.live]
        last = f" (last: {lapsed[-1].holder}, lease lapsed)" if lapsed else ""
        head.add_row("dispatcher", Text(f"none running{last}", style="red"))
    head.add_row(
        "in flight",
        Text(f"{status.in_flight} task(s), {status.slots_busy}/{status.slots} slot(s) busy"),
    )
    head.add_row(
        "queue depth", Text("unknown" if status.queue_depth is None else str(status.queue_depth))
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status.counts.items())) or "no tasks"
    head.add_row("tasks", Text(f"{status.total}: {counts}" if status.total else counts))
    parts.append(head)
    if status.workers is not None:
        workers = Table(title=f"workers: {len(status.workers)}")
        for column in ("name", "queues", "state", "current job", "host", "pid", "last heartbeat"):
            workers.add_column(column, overflow="fold")
        for worker in status.workers:
            workers.add_row(
                _text(worker.name),
                _text(", ".join(worker.queues)),
                _text(worker.state),
                _text(worker.current_job),
                _text(worker.hostname),
                _text(worker.pid),
                _text((worker.last_heartbeat or "")[:19]),
            )
        parts.append(workers)
    return Group(*parts)


def runs_table(views: Sequence[Any]) -> Table:
    """``bridge runs``: one row per run (``usecases.RunView``), oldest first."""
    table = Table(title="runs")
    table.add_column("name", no_wrap=True)
    table.add_column("state")
    table.add_column("total", justify="right")
    table.add_column("counts", overflow="fold")
    table.add_column("created", no_wrap=True)
    for view in views:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(view.counts.items()) if n)
        table.add_row(
            Text(view.name),
            Text(view.state, style=RUN_STATE_STYLES.get(view.state, "")),
            str(view.total),
            Text(counts or "-"),
            Text((view.created_at or "")[:19]),
        )
    return table


RUN_STATE_STYLES = {"done": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}
# ---- route: pools


def pools_table(pools: Sequence[Any]) -> Table:
    """``bridge pool list``: each pool's slots, tasks in flight and ready tasks waiting."""
    table = Table()
    for column in ("pool", "slots", "in flight", "waiting"):
        table.add_column(column, overflow="fold")
    for pool in pools:
        table.add_row(_text(pool.name), str(pool.slots), str(pool.in_flight), str(pool.waiting))
    return table


# ------------------------------------------------------------------------------ schedules


def zoned_time(moment: str | None, zone: str) -> str:
    """A store time in a schedule's zone: ``2026-11-28 03:00 CET``."""
    from bridge.schedules import parse_stamp, parse_zone

    if moment is None:
        return ""
    return parse_stamp(moment).astimezone(parse_zone(zone)).strftime("%Y-%m-%d %H:%M %Z")


def schedules_table(views: Sequence[Any]) -> Table:
    """``bridge schedule list``: ``usecases.ScheduleView`` rows."""
    table = Table()
    columns = ("name", "cron", "timezone", "next due (UTC)", "next due (local)", "last due (UTC)")
    for column in (*columns, "catch-up", "tasks"):
        table.add_column(column, overflow="fold")
    for view in views:
        table.add_row(
            _text(view.name),
            _text(view.cron),
            _text(view.timezone),
            _text(view.next_due and view.next_due[:16]),
            _text(zoned_time(view.next_due, view.timezone)),
            _text(view.last_due and view.last_due[:16]),
            "yes" if view.catch_up else "no",
            str(view.tasks),
        )
    return table
