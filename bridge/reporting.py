"""What a running handler tells the coordinator besides its outcome, as pure rules:
how progress reads, when it is sent, how many log lines an attempt keeps, and when a
fan-in's inputs are too large to send. No I/O: the worker's context
(``bridge.workers.context``) and the store apply them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.messages import truncate


def progress_text(progress: float | None, message: str | None = None) -> str:
    """``40% downloading``: how ``bridge show`` says where a running handler is."""
    if progress is None:
        return message or ""
    text = f"{progress * 100:.0f}%"
    return f"{text} {message}" if message else text


def inputs_problem(sizes: Sequence[tuple[str, int]], limit: int) -> str | None:
    """Why a task's inputs cannot travel with its job, or None when they fit.

    ``sizes`` are ``(dependency id as the graph wrote it, bytes of its output)``. The
    message names the largest dependency: that is the one to make smaller.
    """
    total = sum(size for _, size in sizes)
    if total <= limit:
        return None
    name, largest = max(sizes, key=lambda item: item[1])
    return (
        f"inputs too large: {name!r} is {largest} bytes, the inputs total {total},"
        f" over the limit of {limit} (BRIDGE_MAX_INPUTS)"
    )


class Throttle:
    """At most one send per ``every`` seconds; what was held back is sent later."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: float | None = None

    def ready(self, moment: float) -> bool:
        """Whether a send may happen at ``moment`` (and if so, count it as sent)."""
        if self._last is not None and moment - self._last < self.every:
            return False
        self._last = moment
        return True

    def wait(self, moment: float) -> float:
        """Seconds until the next send may happen."""
        if self._last is None:
            return 0.0
        return max(0.0, self.every - (moment - self._last))


@dataclass
class LogCap:
    """Per-attempt limits on ``ctx.log``: lines beyond them are counted, not kept."""

    max_lines: int
    max_bytes: int
    max_line: int
    lines: int = 0
    size: int = 0
    dropped: int = 0

    def admit(self, message: str) -> str | None:
        """The message as it is kept (cut if too long), or None when over the limits."""
        message = truncate(message, self.max_line)
        size = len(message.encode("utf-8", "replace"))
        if self.lines >= self.max_lines or self.size + size > self.max_bytes:
            self.dropped += 1
            return None
        self.lines += 1
        self.size += size
        return message

    def marker(self) -> str | None:
        """The closing line that says how many lines were dropped, if any were."""
        if not self.dropped:
            return None
        return (
            f"... {self.dropped} lines dropped (an attempt keeps {self.max_lines} lines"
            f" and {self.max_bytes} bytes of log)"
        )
