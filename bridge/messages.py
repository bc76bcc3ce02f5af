"""What crosses Redis between the dispatcher and the workers.

Both sides import this module and nothing else of each other: a report is a
frozen dataclass with its own encode/decode, so a malformed message fails with
a typed error instead of a KeyError deep in the dispatcher.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError
from bridge.states import ReportKind

JOB_FUNCTION = "bridge.workers.entry.run_task"
"""The one function RQ runs; the dispatcher names it by string and imports no worker code."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def job_id_for(task_id: str, attempt: int) -> str:
    """An RQ job id (``[A-Za-z0-9_-]+``) that names the task and the attempt.

    User ids may hold any character, so a readable prefix is kept and a hash of
    the whole id makes it unique.
    """
    digest = hashlib.sha1(task_id.encode()).hexdigest()[:16]
    readable = _UNSAFE.sub("_", task_id)[:40].strip("_") or "task"
    return f"bridge-{readable}-{digest}-a{attempt}"


def reports_key(queue: str) -> str:
    """The Redis stream workers append reports to."""
    return f"bridge:{queue}:reports"


def heartbeat_key(queue: str, job_id: str) -> str:
    """Kept alive by the worker while it runs a job; its expiry means the worker died."""
    return f"bridge:{queue}:alive:{job_id}"


def cancel_key(queue: str, job_id: str) -> str:
    """Set by ``bridge cancel``: a worker checks it before starting the job."""
    return f"bridge:{queue}:cancel:{job_id}"


@dataclass(frozen=True)
class Dispatch:
    """A task committed as ``queued`` for one attempt: what the broker enqueues."""

    task_id: str
    attempt: int
    job_id: str
    kind: str
    payload: str | None
    """The task's payload as JSON text, passed to the worker untouched."""
    timeout: int | None


class ReportError(BridgeError, ValueError):
    """A message on the report stream that is not a report."""


@dataclass(frozen=True)
class Report:
    task_id: str
    attempt: int
    kind: ReportKind
    worker: str | None = None
    output: str | None = None
    """JSON text of the handler's return value (``succeeded`` only)."""
    error: str | None = None
    """``Type: message`` (``failed`` only)."""
    traceback: str | None = None
    at: str | None = None
    started_at: str | None = None
    """On an outcome whose job was too short to send its own ``started`` report."""

    def encode(self) -> dict[str, str]:
        fields: dict[str, Any] = {
            "task_id": self.task_id,
            "attempt": str(self.attempt),
            "kind": self.kind.value,
        }
        for name in ("worker", "output", "error", "traceback", "at", "started_at"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields

    @classmethod
    def decode(cls, fields: dict[bytes | str, bytes | str]) -> "Report":
        text = {_s(k): _s(v) for k, v in fields.items()}
        try:
            return cls(
                task_id=text["task_id"],
                attempt=int(text["attempt"]),
                kind=ReportKind(text["kind"]),
                worker=text.get("worker"),
                output=text.get("output"),
                error=text.get("error"),
                traceback=text.get("traceback"),
                at=text.get("at"),
                started_at=text.get("started_at"),
            )
        except (KeyError, ValueError) as exc:
            raise ReportError(f"not a report: {sorted(text)} ({exc})") from None


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to about ``limit`` bytes with a visible marker, never silently."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    kept = data[: max(0, limit - 64)].decode("utf-8", "ignore")
    return f"{kept}...[truncated {len(data) - len(kept.encode())} of {len(data)} bytes]"


def output_json(value: Any, limit: int) -> str:
    """The handler's value as ``tasks.output`` holds it; oversize becomes a marked string."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    if len(text.encode()) <= limit:
        return text
    budget = limit
    while True:  # escaping may grow the string: shrink until the JSON fits
        wrapped = json.dumps(truncate(text, budget), ensure_ascii=False)
        overflow = len(wrapped.encode()) - limit
        if overflow <= 0:
            return wrapped
        budget -= max(overflow, 16)
