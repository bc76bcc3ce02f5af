"""Runs as a user sees them: what a run may be called, and what state it is in.

Pure rules (no I/O): the store counts a run's tasks, this module says what the counts
mean, so every surface (``bridge runs``, ``wait --run``, ``Run.wait``) agrees.
"""

from collections.abc import Mapping

from bridge.graph import GraphError
from bridge.states import FINISHED_BADLY, IN_FLIGHT, TaskStatus

RUNNING = "running"
"""Something of the run is in flight, ready, or waiting for a dependency that can still
finish (or a delay to pass)."""
DONE = "done"
"""Every task of the run is done."""
FAILED = "failed"
"""Nothing more of the run can run, and at least one of its tasks failed."""
CANCELLED = "cancelled"
"""Nothing more of the run can run, none failed, and at least one was cancelled."""
EMPTY = "empty"
"""The run has no task (all were deleted)."""

RUN_STATES = (RUNNING, DONE, FAILED, CANCELLED, EMPTY)
FINISHED_STATES = frozenset({DONE, FAILED, CANCELLED, EMPTY})
"""States in which nothing of the run can run any more (``delete --run`` needs one)."""

MAX_RUN_NAME = 200


def check_run_name(name: str) -> str:
    """A run name as given, or a ``GraphError``: it becomes the prefix of stored ids."""
    if not isinstance(name, str) or not name.strip():
        raise GraphError("run name must not be empty")
    if len(name) > MAX_RUN_NAME:
        raise GraphError(f"run name is longer than {MAX_RUN_NAME} characters")
    if name != name.strip() or not name.isprintable():
        raise GraphError(f"run name {name!r} must be printable, without surrounding spaces")
    if "/" in name:
        # Stored ids are NAME/id: run "a/b" with task "c" would be run "a" with task "b/c".
        raise GraphError(f"run name {name!r} must not contain '/' (it ends the run in task ids)")
    return name


def run_state(counts: Mapping[str, int], ready: int) -> str:
    """The state of a run from its tasks' counts by status and how many are ready.

    ``ready``: available tasks whose dependencies are all done (those waiting out a
    delay or a retry backoff included: they will run).
    """
    total = sum(counts.values())
    if total == 0:
        return EMPTY
    if counts.get(TaskStatus.DONE.value, 0) == total:
        return DONE
    in_flight = sum(counts.get(s.value, 0) for s in IN_FLIGHT)
    if in_flight or ready:
        return RUNNING
    if counts.get(TaskStatus.FAILED.value, 0):
        return FAILED
    if sum(counts.get(s.value, 0) for s in FINISHED_BADLY):
        return CANCELLED
    return RUNNING  # waiting on tasks of another run that may still finish
