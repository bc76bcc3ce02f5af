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


@handler("fan_in_sum", context=True)
def fan_in_sum(payload: Any, ctx: Any) -> dict[str, Any]:
    """Sum the dependencies' outputs (``ctx.inputs``) and say what the context held."""
    return {
        "sum": sum(ctx.inputs.values()),
        "inputs": sorted(ctx.inputs),
        "task": ctx.task_id,
        "run": ctx.run,
        "attempt": [ctx.attempt, ctx.max_attempts],
    }


@handler("progress_then_wait", context=True)
def progress_then_wait(payload: Any, ctx: Any) -> str:
    """Report progress and log, then wait for the test's gate file (at most a minute)."""
    ctx.log.info("fetching %s", payload["url"])
    ctx.progress(0.4, "downloading")
    ctx.log.warning("slow server")
    deadline = time.monotonic() + 60
    while not os.path.exists(payload["gate"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    ctx.progress(1.0, "done")
    return "fetched"


@handler("sized_output")
def sized_output(payload: Any) -> str:
    return "x" * int(payload["bytes"])


# ---- route: pools


@handler("timed_span")
def timed_span(payload: Any) -> str:
    """Write ``start <name> <time>``, sleep, write ``end <name> <time>`` (one file per run,
    whole lines): tests rebuild how many ran at once from the times."""
    payload = payload or {}
    folder = payload["dir"]
    name = payload.get("name", "?")
    with open(os.path.join(folder, f"{name}.{os.getpid()}.{time.time_ns()}"), "w") as out:
        out.write(f"start {name} {time.time():.6f}\n")
        out.flush()
        time.sleep(float(payload.get("sleep", 0.3)))
        out.write(f"end {name} {time.time():.6f}\n")
        out.flush()
        os.fsync(out.fileno())
    return "spanned"


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
