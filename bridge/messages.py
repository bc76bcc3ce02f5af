"""What crosses Redis between the dispatcher and the workers.

Both sides import this module and nothing else of each other. A dispatch (the
job's fields) and a report are frozen dataclasses, each with its own encode and
decode, so a malformed message fails with a typed error (``MessageError``,
``ReportError``) instead of a KeyError deep in the dispatcher or the worker.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError
from bridge.states import ReportKind

JOB_FUNCTION = "bridge.workers.entry.run_task"
"""The one function bridge's workers run; every other job is refused unrun. The
dispatcher names it by string and imports no worker code."""

MESSAGE_VERSION = 2
"""The format of a job's fields; a worker refuses a job of another version. Version 2
added the handler context: ``inputs``, ``run``, ``local_id`` and ``max_attempts``."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def job_id_for(task_id: str, namespace: str, token: int) -> str:
    """An RQ job id (``[A-Za-z0-9_-]+``) that names the task and carries the fencing token.

    The token is unique over the database's life and the namespace names the
    database, so no two attempts anywhere share a job id (nor the Redis keys
    derived from it); a readable prefix of the task id helps whoever reads RQ.
    """
    readable = _UNSAFE.sub("_", task_id)[:40].strip("_") or "task"
    return f"bridge-{readable}-{namespace}-t{token}"


class MessageError(BridgeError, ValueError):
    """A job's fields or a stream entry that is not what bridge sends."""


@dataclass(frozen=True)
class Dispatch:
    """One attempt of a task, committed ``queued``: what the broker enqueues and the
    worker entry decodes (the job's keyword arguments are exactly ``encode()``)."""

    task_id: str
    attempt: int
    job_id: str
    """Carries the fencing token; a report counts only if it names the task's current job."""
    kind: str
    payload: str | None
    """The task's payload as JSON text, passed to the worker untouched."""
    timeout: float | None
    queue: str = "bridge"
    namespace: str = ""
    """The database's Redis namespace: where the worker sends its reports."""
    max_output: int = 1024 * 1024
    inputs: dict[str, str | None] | None = None
    """Each dependency's id as the graph wrote it -> its output as stored (JSON text);
    None for a task without dependencies. The dispatcher checked their size; the worker
    decodes them (``decode_output``) only for a handler that asks for its context, so
    a plain handler's job costs no decoding on either side."""
    run: str | None = None
    """The run the task belongs to (``ctx.run``)."""
    local_id: str | None = None
    """The id as the graph wrote it, when the run scoped it (``ctx.task_id``)."""
    max_attempts: int = 1

    @property
    def graph_id(self) -> str:
        """The task's id as its graph wrote it."""
        return self.local_id if self.local_id is not None else self.task_id

    def encode(self) -> dict[str, Any]:
        return {
            "v": MESSAGE_VERSION,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "job_id": self.job_id,
            "kind": self.kind,
            "payload": self.payload,
            "timeout": self.timeout,
            "queue": self.queue,
            "namespace": self.namespace,
            "max_output": self.max_output,
            "inputs": self.inputs,
            "run": self.run,
            "local_id": self.local_id,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def decode(cls, fields: Any) -> "Dispatch":
        """The job's fields, checked field by field: anything else is a ``MessageError``."""
        if not isinstance(fields, dict) or fields.get("v") != MESSAGE_VERSION:
            raise MessageError("not a bridge job (unknown message version)")
        try:
            dispatch = cls(
                task_id=_typed(fields, "task_id", str),
                attempt=_typed(fields, "attempt", int),
                job_id=_typed(fields, "job_id", str),
                kind=_typed(fields, "kind", str),
                payload=_typed(fields, "payload", str, optional=True),
                timeout=_typed(fields, "timeout", (int, float), optional=True),
                queue=_typed(fields, "queue", str),
                namespace=_typed(fields, "namespace", str),
                max_output=_typed(fields, "max_output", int),
                inputs=_typed(fields, "inputs", dict, optional=True),
                run=_typed(fields, "run", str, optional=True),
                local_id=_typed(fields, "local_id", str, optional=True),
                max_attempts=_typed(fields, "max_attempts", int),
            )
        except KeyError as exc:
            raise MessageError(f"not a bridge job (missing {exc})") from None
        extra = sorted(set(fields) - set(dispatch.encode()))
        if extra:
            raise MessageError(f"not a bridge job (unexpected fields {extra})")
        if not _NAMESPACE.fullmatch(dispatch.namespace):
            raise MessageError("not a bridge job (bad namespace)")
        if dispatch.inputs is not None and not all(
            isinstance(k, str) and (v is None or isinstance(v, str))
            for k, v in dispatch.inputs.items()
        ):
            raise MessageError("not a bridge job (field 'inputs' has the wrong type)")
        return dispatch


_NAMESPACE = re.compile(r"[0-9a-f]{1,32}")


def _typed(fields: dict, name: str, kind: Any, *, optional: bool = False) -> Any:
    value = fields[name]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MessageError(f"not a bridge job (field {name!r} has the wrong type)")
    return value


class ReportError(BridgeError, ValueError):
    """A message on the report stream that is not a report."""


@dataclass(frozen=True)
class Report:
    task_id: str
    attempt: int
    kind: ReportKind
    job_id: str
    """The attempt's job id, which carries its fencing token."""
    worker: str | None = None
    output: str | None = None
    """JSON text of the handler's return value (``succeeded`` only)."""
    error: str | None = None
    """``Type: message`` (``failed`` only)."""
    traceback: str | None = None
    at: str | None = None
    started_at: str | None = None
    """On an outcome whose job was too short to send its own ``started`` report."""
    progress: float | None = None
    """Fraction done, 0 to 1 (``progress`` only)."""
    message: str | None = None
    """What the handler said with its progress (``progress`` only)."""
    lines: str | None = None
    """JSON text of ``[[at, level, message], ...]`` (``log`` only)."""

    def encode(self) -> dict[str, str]:
        fields: dict[str, Any] = {
            "task_id": self.task_id,
            "attempt": str(self.attempt),
            "kind": self.kind.value,
            "job_id": self.job_id,
        }
        for name in (
            "worker",
            "output",
            "error",
            "traceback",
            "at",
            "started_at",
            "message",
            "lines",
        ):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.progress is not None:
            fields["progress"] = repr(float(self.progress))
        return fields

    @classmethod
    def decode(cls, fields: dict[bytes | str, bytes | str]) -> "Report":
        text = {_s(k): _s(v) for k, v in fields.items()}
        try:
            return cls(
                task_id=text["task_id"],
                attempt=int(text["attempt"]),
                kind=ReportKind(text["kind"]),
                job_id=text["job_id"],
                worker=text.get("worker"),
                output=text.get("output"),
                error=text.get("error"),
                traceback=text.get("traceback"),
                at=text.get("at"),
                started_at=text.get("started_at"),
                progress=_fraction(text.get("progress")),
                message=text.get("message"),
                lines=text.get("lines"),
            )
        except (KeyError, ValueError) as exc:
            raise ReportError(f"not a report: {sorted(text)} ({exc})") from None


def _fraction(text: str | None) -> float | None:
    """A progress fraction: a finite number, clamped to 0..1."""
    if text is None:
        return None
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"progress {text!r} is not a finite number")
    return min(1.0, max(0.0, value))


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to about ``limit`` bytes with a visible marker, never silently."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    kept = data[: max(0, limit - 64)].decode("utf-8", "ignore")
    return f"{kept}...[truncated {len(data) - len(kept.encode())} of {len(data)} bytes]"


def decode_output(output: str | None) -> Any:
    """A stored output as the handler returned it; text that is not JSON (a Task
    Coordinator task's, or one cut to ``BRIDGE_MAX_OUTPUT``) is given as the string."""
    if output is None:
        return None
    try:
        return json.loads(output)
    except ValueError:
        return output


def output_json(value: Any, limit: int) -> str:
    """The handler's value as ``tasks.output`` holds it; oversize becomes a marked string.

    Only JSON values are accepted: an object, a set or bytes raise ``TypeError`` and
    NaN or Infinity raise ``ValueError`` (the attempt fails saying so), rather than
    being stored as a ``repr`` or as text that is not JSON.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("the handler returned NaN or Infinity, which JSON cannot hold") from None
    except TypeError as exc:
        raise TypeError(f"the handler's return value is not JSON: {exc}") from None
    if len(text.encode()) <= limit:
        return text
    budget = limit
    while True:  # escaping may grow the string: shrink until the JSON fits
        wrapped = json.dumps(truncate(text, budget), ensure_ascii=False)
        overflow = len(wrapped.encode()) - limit
        if overflow <= 0:
            return wrapped
        budget -= max(overflow, 16)
