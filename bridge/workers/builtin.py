"""Handlers every worker knows."""

import time
from typing import Any

from bridge.workers.registry import handler


@handler("noop")
def noop(payload: Any) -> None:
    return None


@handler("echo")
def echo(payload: Any) -> Any:
    return payload


@handler("sleep")
def sleep(payload: Any) -> dict[str, float]:
    seconds = float((payload or {}).get("seconds", 1.0))
    time.sleep(seconds)
    return {"slept": seconds}


class TaskFailed(Exception):
    """Raised by the ``fail`` handler, with the payload's message."""


@handler("fail")
def fail(payload: Any) -> None:
    message = payload.get("message", "failed on purpose") if isinstance(payload, dict) else payload
    raise TaskFailed(str(message or "failed on purpose"))
