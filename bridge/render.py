"""How tasks, events and slots look on a terminal (rich) and as ``--json``."""

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from bridge.models import Task, TaskEvent, WorkerSlot
from bridge.store import task_dict

STATUS_STYLE = {
    "available": "white",
    "queued": "cyan",
    "working": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


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


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def tasks_table(tasks: Sequence[Task], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("id", "status", "kind", "attempt", "worker", "deps", "output / error"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        deps = json.loads(task.dependencies or "[]")
        result = task.error if task.error else task.output
        table.add_row(
            task.id,
            _status(task.status),
            task.kind,
            f"{task.attempts}/{task.max_attempts}" if task.max_attempts > 1 else str(task.attempts),
            task.worker or "",
            str(len(deps)) if deps else "",
            _short(result),
        )
    return table


def events_table(events: Sequence[TaskEvent]) -> Table:
    table = Table()
    for column in ("at", "task", "from", "to", "attempt", "worker", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(
            event.at[:23],
            event.task_id,
            event.from_status or "",
            _status(event.to_status),
            str(event.attempt),
            event.worker or "",
            _short(event.detail, 80),
        )
    return table


def slots_table(slots: Sequence[WorkerSlot]) -> Table:
    table = Table()
    for column in ("slot", "active", "task", "worker", "updated_at"):
        table.add_column(column)
    for slot in slots:
        table.add_row(
            str(slot.slot),
            "yes" if slot.active else "no",
            slot.task_id or "",
            slot.worker_id or "",
            (slot.updated_at or "")[:23],
        )
    return table


def task_detail(task: Task, dependencies: Sequence[tuple[str, str]]) -> Table:
    """``bridge show``: every field, plus why the task is where it is."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    data = task_dict(task)
    for key, value in data.items():
        if key in ("dependencies", "pending_dependencies", "note"):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        table.add_row(
            key, _status(str(value)) if key == "status" else ("" if value is None else str(value))
        )
    if dependencies:
        table.add_row(
            "dependencies", ", ".join(f"{dep} ({status})" for dep, status in dependencies)
        )
    table.add_row("why", explain(task, dependencies))
    return table


def explain(task: Task, dependencies: Sequence[tuple[str, str]]) -> str:
    """One sentence on why the task is in its state (``bridge show``)."""
    if task.status == "available":
        bad = [dep for dep, status in dependencies if status in ("failed", "cancelled")]
        waiting = [dep for dep, status in dependencies if status != "done"]
        if bad:
            return f"blocked: dependency {', '.join(bad)} failed or was cancelled (bridge retry it)"
        if waiting:
            return f"waiting for {len(waiting)} dependency(ies): {', '.join(waiting[:5])}"
        if task.not_before:
            return task.note or f"retry backoff until {task.not_before[:19]} UTC"
        return "ready: waiting for a free slot and a running dispatcher"
    if task.status == "queued":
        return task.note or "enqueued: waiting for a worker to pick it up"
    if task.status == "working":
        return f"running on {task.worker or 'a worker'}"
    return task.note or {
        "done": "finished",
        "failed": "failed with no attempts left",
        "cancelled": "cancelled",
    }.get(task.status, "")
