"""Queues as the database sees them: how many tasks wait for a worker of each."""

from sqlalchemy import text
from sqlmodel import Session

from bridge.models import IN_FLIGHT_WHERE

_WAITING_BY_QUEUE = (
    text(
        f"SELECT queue, count(*) AS n FROM tasks WHERE {IN_FLIGHT_WHERE}"
        " AND status = 'queued' GROUP BY queue"
    ),
    text(
        "SELECT queue, count(*) AS n FROM tasks"
        " WHERE status = 'available' AND pending_deps = 0 GROUP BY queue"
    ),
)
"""Queued tasks (their job sits in the queue) and ready ones (sent there next), each read
through its partial index rather than every task's row."""


def queue_backlog(*, session: Session) -> dict[str, int]:
    """Per queue, the tasks that need a worker of that queue next: queued or ready."""
    counts: dict[str, int] = {}
    for statement in _WAITING_BY_QUEUE:
        for row in session.connection().execute(statement):
            counts[row.queue] = counts.get(row.queue, 0) + int(row.n)
    return counts
