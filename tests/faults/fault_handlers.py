"""Handlers for the fault-injection suite; workers import this module through BRIDGE_HANDLERS.

Each handler appends one line per run to the log named in its payload (like
``test_handlers.record``), so a test counts side effects exactly.
"""

import os
import time
from pathlib import Path
from typing import Any

from bridge.workers import handler


def _runs_so_far(log: str, name: str) -> int:
    path = Path(log)
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.split(" ", 1)[0] == name)


def _append(log: str, name: str) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"{name} {time.time():.6f} {os.getpid()}\n")
        out.flush()
        os.fsync(out.fileno())


@handler("slow_first")
def slow_first(payload: Any) -> dict[str, Any]:
    """Records a run; only the first run of a name sleeps, so a retry is quick."""
    first = _runs_so_far(payload["log"], payload["name"]) == 0
    _append(payload["log"], payload["name"])
    if first:
        time.sleep(float(payload.get("sleep", 4.0)))
    return {"name": payload["name"], "first": first}


@handler("flaky")
def flaky(payload: Any) -> dict[str, Any]:
    """Records a run; fails on the first run of a name, succeeds afterwards."""
    first = _runs_so_far(payload["log"], payload["name"]) == 0
    _append(payload["log"], payload["name"])
    if first:
        raise RuntimeError(f"flaky task {payload['name']} fails on its first run")
    return {"name": payload["name"]}


@handler("big_output")
def big_output(payload: Any) -> Any:
    """Records a run and returns ``size`` bytes of output, shaped as ``shape`` says."""
    _append(payload["log"], payload["name"])
    size = int(payload["size"])
    shape = payload.get("shape", "string")
    if shape == "string":
        return "x" * size
    if shape == "list":  # many short strings: quotes that JSON escapes when nested
        return ["ab"] * (size // 6)
    if shape == "unicode":
        return "ü日🚀" * (size // 9)
    raise ValueError(f"unknown shape {shape!r}")


@handler("big_error")
def big_error(payload: Any) -> None:
    """Records a run and fails with an error message of ``size`` bytes."""
    _append(payload["log"], payload["name"])
    raise RuntimeError("E" * int(payload["size"]))
