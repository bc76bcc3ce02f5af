"""Child processes that never outlive the process that started them.

``bridge run`` starts a dispatcher, workers and perhaps a private redis-server.
Its ordered stop covers every way it ends that it can see; these helpers cover
the ones it cannot (``kill -9``): on Linux each child asks the kernel for
SIGTERM when its parent dies, and ``bridge run`` adopts the orphans of its
children (RQ's work horses) so that its last sweep can find them. Elsewhere
both are no-ops and the ordered stop is all there is.
"""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies.

    SIGTERM, not SIGKILL, so a worker still finishes its current task and the
    dispatcher still applies the last reports. The parent may already be gone
    between fork and ``prctl``; the child then signals itself. None where the
    kernel offers no such thing.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def adopt_orphans() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux only).

    A work horse whose worker was killed is re-parented here rather than to
    init, so :func:`descendants` still finds it. Returns whether it worked.
    """
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid to start time (which tells a reused pid).

    Reads /proc; empty where there is none. Zombies count as gone.
    """
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in pids:
        stat = _stat(pid)
        if stat is not None and stat[2] != "Z":
            children.setdefault(stat[0], []).append((pid, stat[1]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def alive(pid: int, started: int) -> bool:
    """True while the process that had ``pid`` at ``started`` still runs (not a zombie)."""
    stat = _stat(pid)
    return stat is not None and stat[1] == started and stat[2] != "Z"


def kill_all(processes: dict[int, int]) -> None:
    """SIGKILL each still-live process of a :func:`descendants` snapshot."""
    for pid, started in processes.items():
        if alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
