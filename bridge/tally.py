"""Counts of tasks by status kept up to date from the audit trail, without a full scan.

Every state change is a ``task_events`` row (from, to), so a count taken once can be
carried forward by the events after it: the cost grows with what changed, not with
how many tasks the database holds. Pure logic; the reads are the caller's.
"""

from collections.abc import Iterable, Mapping
from typing import Any


def apply_events(counts: dict[str, int], events: Iterable[Mapping[str, Any]]) -> None:
    """Move one task per event from its ``from_status`` (none: a new task) to its
    ``to_status``; an event that changes nothing (an ignored report) moves nothing."""
    for event in events:
        source, target = event.get("from_status"), event.get("to_status")
        if source == target or target is None:
            continue
        if source is not None:
            counts[source] = counts.get(source, 0) - 1
            if counts[source] <= 0:
                del counts[source]
        counts[target] = counts.get(target, 0) + 1
