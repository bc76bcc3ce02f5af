"""Handlers of the chaos and pause tests; workers import this module through BRIDGE_HANDLERS.

Each run appends one JSON line when the handler starts and one when it ends to the
journal named by ``CHAOS_HANDLER_LOG`` (the worker's environment), so a checker can
tell exactly which attempt of which task ran, where, and when. Lines are short and
written with one ``write`` on an ``O_APPEND`` descriptor, so lines of concurrent
work horses never interleave.

The attempt is read from the job (``kwargs["attempt"]`` while the entry point passes
it, else the ``-a<N>`` suffix of the job id, else None); tests rely only on the job id
and ``kwargs["task_id"]``, which every version of the entry point carries.
"""

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from rq import get_current_job

from bridge import handler

LOG_ENV = "CHAOS_HANDLER_LOG"
"""The variable naming the journal file (one JSON line per handler start and end)."""

_ATTEMPT = re.compile(r"-a(\d+)$")


def _job_fields() -> dict[str, Any]:
    job = get_current_job()
    if job is None:
        return {"job": None, "task": None, "attempt": None}
    kwargs = job.kwargs or {}
    attempt = kwargs.get("attempt")
    if attempt is None:
        found = _ATTEMPT.search(job.id)
        attempt = int(found.group(1)) if found else None
    return {"job": job.id, "task": kwargs.get("task_id"), "attempt": attempt}


def _journal(line: dict[str, Any]) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _runs_so_far(task: str | None) -> int:
    """Handler starts already journaled for ``task`` (before this one)."""
    path = os.environ.get(LOG_ENV)
    if not path or not Path(path).exists():
        return 0
    count = 0
    for text in Path(path).read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if line.get("event") == "start" and line.get("task") == task:
            count += 1
    return count


class _Run:
    """Journals a start on entry and an end (``ok`` and, on failure, the error) on exit."""

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind = kind
        self.fields = {**_job_fields(), "kind": kind, "pid": os.getpid(), "ppid": os.getppid()}
        if isinstance(payload, dict):  # labels a test gives its tasks, journaled as they are
            for label in ("generation", "tag"):
                if label in payload:
                    self.fields[label] = payload[label]

    def __enter__(self) -> "_Run":
        self.start = time.time()
        _journal({"event": "start", **self.fields, "t": self.start})
        return self

    def __exit__(self, kind, exc, tb) -> None:  # noqa: ANN001
        line = {"event": "end", **self.fields, "t": time.time(), "ok": exc is None}
        if exc is not None:
            line["error"] = f"{type(exc).__name__}: {exc}"[:200]
        _journal(line)


def _sleep(payload: Any) -> float:
    return float(payload.get("sleep", 0.0)) if isinstance(payload, dict) else 0.0


@handler("chaos_sleep")
def chaos_sleep(payload: Any) -> dict[str, Any]:
    """Sleeps ``sleep`` seconds (0 for a short task) and succeeds."""
    with _Run("chaos_sleep", payload) as run:
        time.sleep(_sleep(payload))
        return {"task": run.fields["task"], "generation": payload.get("generation")}


@handler("chaos_gil")
def chaos_gil(payload: Any) -> dict[str, Any]:
    """Holds the GIL for one C call: ``sum(range(n))`` never yields to another thread."""
    with _Run("chaos_gil", payload) as run:
        total = sum(range(int(payload["n"])))
        return {"task": run.fields["task"], "sum_mod": total % 1000}


@handler("chaos_fail")
def chaos_fail(payload: Any) -> None:
    """Always fails (a designed-to-fail task), after ``sleep`` seconds."""
    with _Run("chaos_fail", payload):
        time.sleep(_sleep(payload))
        raise RuntimeError("chaos_fail fails by design")


@handler("chaos_flaky")
def chaos_flaky(payload: Any) -> dict[str, Any]:
    """Fails on the first ``fail_runs`` runs of its task (default 1), then succeeds."""
    task = _job_fields()["task"]
    earlier = _runs_so_far(task)
    with _Run("chaos_flaky", payload) as run:
        time.sleep(_sleep(payload))
        if earlier < int(payload.get("fail_runs", 1)):
            raise RuntimeError(f"chaos_flaky fails on run {earlier + 1}")
        return {"task": run.fields["task"]}
