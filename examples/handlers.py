"""An example handler module: run workers with BRIDGE_HANDLERS=examples.handlers."""

from typing import Any

from bridge.workers import handler


@handler("word_count")
def word_count(payload: Any) -> dict[str, int]:
    """Count the words of ``payload["text"]``."""
    text = (payload or {}).get("text", "")
    return {"words": len(text.split())}
