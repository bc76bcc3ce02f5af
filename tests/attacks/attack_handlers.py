"""Handlers for the attack tests (loaded with ``BRIDGE_HANDLERS=...,attacks.attack_handlers``)."""

import time
from typing import Any

from bridge import handler


@handler("stubborn")
def stubborn(payload: Any) -> str:
    """Run for ``seconds``, swallowing RQ's timeout like a broad ``except Exception`` retry
    loop in user code would: the task overruns its timeout with its worker healthy."""
    deadline = time.monotonic() + float((payload or {}).get("seconds", 60))
    while time.monotonic() < deadline:
        try:
            time.sleep(0.2)
        except Exception:  # JobTimeoutException included
            pass
    return "done"
