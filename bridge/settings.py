"""Settings read from the environment, validated once, passed down explicitly.

Every setting is also a global CLI option (see ``bridge.cli``); the CLI builds
one ``Settings`` per process and hands it to whatever it starts.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from bridge.errors import BridgeError

DEFAULT_DATABASE_URL = "sqlite:///task-coordinator.db"
"""The seed's file, ``./task-coordinator.db``, relative to the working directory."""

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "bridge"
DEFAULT_SLOTS = 5
"""How many tasks may be in flight at once; keeps the Redis queue short."""

WORKER_CLASSES = ("fork", "simple")
DEFAULT_WORKER_CLASS = "fork"
"""RQ's forking worker: a handler that crashes or leaks cannot take the worker down,
and a running job can be stopped. ``simple`` runs jobs in-process, several times faster."""

DEFAULT_MAX_OUTPUT = 1024 * 1024
"""Bytes of handler output or error kept in the database; longer text is truncated."""


class SettingsError(BridgeError, ValueError):
    """A setting has a value that cannot work; the CLI prints it as one line."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    queue: str = DEFAULT_QUEUE
    slots: int = DEFAULT_SLOTS
    handlers: tuple[str, ...] = ()
    worker_class: str = DEFAULT_WORKER_CLASS
    max_output: int = DEFAULT_MAX_OUTPUT
    redis_explicit: bool = field(default=False, compare=False)
    """True when the user named a Redis URL; ``bridge run`` then never starts its own."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise SettingsError(f"slots must be at least 1, got {self.slots}")
        if not self.queue or not all(c.isalnum() or c in "_-." for c in self.queue):
            raise SettingsError(
                f"queue name must be letters, digits, '_', '-' or '.': {self.queue!r}"
            )
        if self.worker_class not in WORKER_CLASSES:
            raise SettingsError(
                f"worker class must be one of {', '.join(WORKER_CLASSES)}: {self.worker_class!r}"
            )
        if self.max_output < 1024:
            raise SettingsError(f"max output must be at least 1024 bytes, got {self.max_output}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Environment first, then explicit overrides (CLI options) that are not None."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if env.get("BRIDGE_DATABASE_URL"):
            values["database_url"] = env["BRIDGE_DATABASE_URL"]
        if env.get("BRIDGE_REDIS_URL"):
            values["redis_url"] = env["BRIDGE_REDIS_URL"]
            values["redis_explicit"] = True
        if env.get("BRIDGE_QUEUE"):
            values["queue"] = env["BRIDGE_QUEUE"]
        if env.get("BRIDGE_SLOTS"):
            values["slots"] = _int("BRIDGE_SLOTS", env["BRIDGE_SLOTS"])
        if env.get("BRIDGE_HANDLERS"):
            values["handlers"] = parse_handlers(env["BRIDGE_HANDLERS"])
        if env.get("BRIDGE_WORKER_CLASS"):
            values["worker_class"] = env["BRIDGE_WORKER_CLASS"]
        if env.get("BRIDGE_MAX_OUTPUT"):
            values["max_output"] = _int("BRIDGE_MAX_OUTPUT", env["BRIDGE_MAX_OUTPUT"])
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "handlers" and isinstance(value, str):
                value = parse_handlers(value)
            values[key] = value
            if key == "redis_url":
                values["redis_explicit"] = True
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]

    def as_env(self) -> dict[str, str]:
        """The environment that gives a child process these same settings."""
        return {
            "BRIDGE_DATABASE_URL": self.database_url,
            "BRIDGE_REDIS_URL": self.redis_url,
            "BRIDGE_QUEUE": self.queue,
            "BRIDGE_SLOTS": str(self.slots),
            "BRIDGE_HANDLERS": ",".join(self.handlers),
            "BRIDGE_WORKER_CLASS": self.worker_class,
            "BRIDGE_MAX_OUTPUT": str(self.max_output),
        }


def parse_handlers(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {text!r}") from None


def redact_url(url: str) -> str:
    """A URL fit for logs and messages: any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    credentials, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
