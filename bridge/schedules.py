"""When a schedule is due: cron expressions in a time zone, pure (no I/O).

Due times are computed with cronsim in the schedule's own zone (``zoneinfo``), then
kept and compared in UTC. Across daylight-saving changes cronsim follows Debian cron:

- a job at a fixed local time (minute and hour fields without ``*``) that falls in the
  hour skipped when clocks go forward runs once, at the first valid minute after it
  (``30 2 * * *`` in America/New_York on 2026-03-08 is due at 03:00 EDT);
- such a job in the hour repeated when clocks go back runs once, in the first pass
  (``30 1 * * *`` on 2026-11-01 is due at 01:30 EDT, not again at 01:30 EST);
- a job with ``*`` in its minute or hour field follows the clock as it runs: it is due
  in both passes of a repeated hour and not at all in a skipped one.

A schedule's occurrence becomes a run named after the schedule and the due time in UTC
(``nightly-20261128T0200Z``); the name is the run's primary key, which is what makes
each occurrence happen at most once.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from bridge.errors import BridgeError
from bridge.graph import TaskSpec

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The ``@`` shorthands of Vixie cron (``@reboot`` has no meaning here)."""

CATCH_UP_BATCH = 100
"""Missed due times created per transaction with ``--catch-up``; the rest follow at once,
batch after batch (the schedule stays due until it has caught up)."""

MAX_STEPS = 1000
"""Due times looked at to step past an instant (a safety bound, never reached in practice)."""

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_NAME = 80


class ScheduleError(BridgeError, ValueError):
    """A schedule that cannot be added or found; the message is the one line shown."""


def check_name(name: str) -> str:
    """A schedule's name starts each of its runs' names, which prefix task ids."""
    if not name or len(name) > MAX_NAME or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise ScheduleError(
            f"bad schedule name {name!r}: 1 to {MAX_NAME} letters, digits or _.-,"
            " starting with a letter, digit or _"
        )
    return name


def parse_cron(expression: str) -> str:
    """The expression, checked, as five fields (minute hour day month weekday)."""
    text = " ".join(expression.split())
    text = ALIASES.get(text.lower(), text)
    if len(text.split()) != 5:
        raise ScheduleError(
            f"bad cron expression {expression!r}: give five fields"
            " (minute hour day-of-month month day-of-week, e.g. '0 2 * * *') or @daily"
        )
    try:
        it = CronSim(text, datetime(2000, 1, 1, tzinfo=timezone.utc))
        next(it)
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {expression!r}: {exc}") from None
    except StopIteration:
        raise ScheduleError(f"cron expression {expression!r} is never due") from None
    return text


def parse_zone(name: str) -> ZoneInfo:
    """An IANA time zone (``Europe/Berlin``, ``UTC``)."""
    try:
        if not name or name != name.strip() or ".." in name or name.startswith("/"):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"unknown time zone {name!r} (give an IANA name such as Europe/Berlin or UTC)"
        ) from None


def next_due(cron: str, zone: str, after: datetime) -> datetime:
    """The first due time strictly after ``after`` (aware), in UTC."""
    start = after.astimezone(parse_zone(zone))
    try:
        times = CronSim(cron, start)
        for _ in range(MAX_STEPS):
            # In a repeated hour cronsim answers the first pass: an instant before
            # ``after`` when ``after`` is in the second one. Step past it.
            due = next(times).astimezone(timezone.utc)
            if due > after:
                return due
    except (CronSimError, StopIteration):
        pass
    raise ScheduleError(f"cron expression {cron!r} is never due after {after:%Y-%m-%d %H:%M}")


def latest_due(cron: str, zone: str, at: datetime) -> datetime | None:
    """The last due time at or before ``at`` (aware), in UTC; None if there is none."""
    start = at.astimezone(parse_zone(zone)).replace(microsecond=0) + timedelta(seconds=1)
    try:
        due = next(CronSim(cron, start, reverse=True)).astimezone(timezone.utc)
    except (CronSimError, StopIteration):
        return None
    return due if due <= at else None


@dataclass(frozen=True)
class Firing:
    """What to do for a schedule whose due time has come."""

    due: list[datetime]
    """The due times to create a run for, oldest first (UTC)."""
    next_due: datetime
    """The schedule's due time after these (may still be in the past while catching up)."""
    skipped: int
    """Missed due times passed over (latest-only), at least; 0 with catch-up."""


def plan(cron: str, zone: str, *, due: datetime, now: datetime, catch_up: bool) -> Firing | None:
    """Which runs a schedule due at ``due`` gets at ``now``, or None if it is not due yet.

    Without catch-up only the latest due time not after ``now`` is created (missed ones
    are passed over); with it every one is, ``CATCH_UP_BATCH`` at a time.
    """
    if due > now:
        return None
    if catch_up:
        times = [due]
        following = next_due(cron, zone, due)
        while following <= now and len(times) < CATCH_UP_BATCH:
            times.append(following)
            following = next_due(cron, zone, following)
        return Firing(times, following, 0)
    latest = latest_due(cron, zone, now)
    latest = due if latest is None or latest < due else latest
    skipped = 0 if latest == due else 1 + _count_between(cron, zone, due, latest)
    return Firing([latest], next_due(cron, zone, latest), skipped)


def _count_between(cron: str, zone: str, first: datetime, last: datetime) -> int:
    """Due times strictly between two due times, counted up to ``MAX_STEPS``."""
    count, moment = 0, next_due(cron, zone, first)
    while moment < last and count < MAX_STEPS:
        count += 1
        moment = next_due(cron, zone, moment)
    return count


def run_name(schedule: str, due: datetime) -> str:
    """The run of one occurrence: ``nightly-20261128T0200Z`` (the due time in UTC)."""
    return f"{schedule}-{due.astimezone(timezone.utc):%Y%m%dT%H%M}Z"


def stamp(moment: datetime) -> str:
    """A UTC instant as the store writes times."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def parse_stamp(text: str) -> datetime:
    """A time as the store writes it (UTC, no zone) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def spec_mapping(spec: TaskSpec) -> dict[str, Any]:
    """A task spec as a graph file writes it (keys left out when unset)."""
    data: dict[str, Any] = {
        "id": spec.id,
        "description": spec.description,
        "kind": spec.kind,
        "payload": spec.payload,
        "dependencies": list(spec.dependencies),
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "timeout": spec.timeout,
        "queue": spec.queue,
        "pool": spec.pool,
        "not_before": spec.not_before,
        "delay": spec.delay,
    }
    return {key: value for key, value in data.items() if value is not None}


def graph_json(tasks: Sequence[Mapping[str, Any]], *, queue: str) -> str:
    """The task list a schedule keeps: each task without a queue gets ``queue`` (the
    ``BRIDGE_QUEUE`` of whoever added the schedule, as for ``bridge add``)."""
    return json.dumps(
        [dict(task) if task.get("queue") else {**task, "queue": queue} for task in tasks],
        ensure_ascii=False,
    )
