"""Handlers used by tests; workers import this module through BRIDGE_HANDLERS."""

import os
import time
from typing import Any

from bridge import handler


@handler("record")
def record(payload: Any) -> dict[str, Any]:
    """Append one line per run to a file, so tests count side effects exactly."""
    payload = payload or {}
    with open(payload["log"], "a", encoding="utf-8") as log:
        log.write(f"{payload.get('name', '?')} {time.time():.6f} {os.getpid()}\n")
        log.flush()
        os.fsync(log.fileno())
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    return {"name": payload.get("name"), "value": payload.get("value")}


@handler("sum_inputs")
def sum_inputs(payload: Any) -> int:
    return sum(payload.get("values", [])) if isinstance(payload, dict) else 0


@handler("marked_sleep")
def marked_sleep(payload: Any) -> str:
    """Write ``start <name>``, sleep, write ``end <name>``: tests see whether a run was cut."""
    payload = payload or {}
    with open(payload["log"], "a", encoding="utf-8") as log:
        log.write(f"start {payload.get('name', '?')} {os.getpid()}\n")
    time.sleep(float(payload.get("sleep", 5)))
    with open(payload["log"], "a", encoding="utf-8") as log:
        log.write(f"end {payload.get('name', '?')} {os.getpid()}\n")
    return "slept"


@handler("payload_log")
def payload_log(payload: Any) -> Any:
    """Append the payload as one JSON line to ``$BRIDGE_TEST_PAYLOAD_LOG``: tests see what
    each run was given (adopted Task Coordinator tasks get their id and description)."""
    import json

    with open(os.environ["BRIDGE_TEST_PAYLOAD_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(payload, ensure_ascii=False) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return payload


@handler("fail_until")
def fail_until(payload: Any) -> str:
    """Fail until the file ``payload["flag"]`` exists: a test fixes the cause, then retries."""
    if not os.path.exists(payload["flag"]):
        raise RuntimeError(f"not yet: {payload['flag']} is missing")
    return "recovered"


@handler("wait_for")
def wait_for(payload: Any) -> str:
    """Run until the file ``payload["flag"]`` exists (at most a minute): a test decides
    when the task finishes."""
    deadline = time.monotonic() + 60
    while not os.path.exists(payload["flag"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{payload['flag']} never appeared")
        time.sleep(0.05)
    return "finished"
