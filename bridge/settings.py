"""Settings read from the environment, validated once, passed down explicitly.

Every setting is also a global CLI option (see ``bridge.cli``); the CLI builds
one ``Settings`` per process and hands it to whatever it starts.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from bridge.defaults import RETENTION_EVERY
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

DEFAULT_MAX_BODY = 10 * 1024 * 1024
"""Bytes of an HTTP request body ``bridge serve`` accepts; more gets 413."""


class SettingsError(BridgeError, ValueError):
    """A setting has a value that cannot work; the CLI prints it as one line."""


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in ``90m``, ``12h``, ``30d`` (also ``s`` and ``w``); more than zero."""
    match = _DURATION.match(text)
    seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)] if match else 0.0
    if seconds <= 0:
        raise SettingsError(
            f"bad {what} {text!r}: give a number above 0 and a unit s, m, h, d or w"
            " (e.g. 90m, 12h, 30d)"
        )
    return seconds


def parse_retention(text: str | None) -> float | None:
    """``BRIDGE_RETENTION``: a duration, or empty/``off`` for none (the default)."""
    if text is None or text.strip().lower() in ("", "off"):
        return None
    return parse_duration(text, "BRIDGE_RETENTION")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    queue: str = DEFAULT_QUEUE
    slots: int = DEFAULT_SLOTS
    handlers: tuple[str, ...] = ()
    worker_class: str = DEFAULT_WORKER_CLASS
    max_output: int = DEFAULT_MAX_OUTPUT
    auto_migrate: bool = True
    """Upgrade an older database's schema when a command opens it (under a lock); off,
    commands refuse it and say to run ``bridge db upgrade`` (for DBAs: ``--sql``)."""
    retention: str | None = None
    """``BRIDGE_RETENTION`` as given (e.g. ``30d``): the dispatcher prunes finished graphs
    older than this, at most once an hour. None: it never prunes (the default)."""
    retention_every: float = RETENTION_EVERY
    """Seconds between the dispatcher's retention passes (``BRIDGE_RETENTION_EVERY``)."""
    redis_explicit: bool = field(default=False, compare=False)
    """True when the user named a Redis URL; ``bridge run`` then never starts its own."""
    api_token: str | None = field(default=None, repr=False)
    """``BRIDGE_API_TOKEN`` (or the first line of ``BRIDGE_API_TOKEN_FILE``): when set,
    ``bridge serve`` asks for it on every route but ``/healthz`` and the sign-in page, and
    may listen beyond loopback. Never shown (``repr=False``)."""
    max_body: int = DEFAULT_MAX_BODY
    """``BRIDGE_MAX_BODY``: bytes of an HTTP request body ``bridge serve`` accepts."""

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
        parse_retention(self.retention)
        if self.api_token is not None and not self.api_token.strip():
            raise SettingsError("BRIDGE_API_TOKEN is empty: give a token or unset it")
        if self.max_body < 1024:
            raise SettingsError(f"BRIDGE_MAX_BODY must be at least 1024 bytes, got {self.max_body}")
        if not self.retention_every > 0:
            raise SettingsError(
                f"BRIDGE_RETENTION_EVERY must be above 0 seconds, got {self.retention_every:g}"
            )

    @property
    def retention_seconds(self) -> float | None:
        """The retention as seconds, None when off."""
        return parse_retention(self.retention)

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
        if env.get("BRIDGE_AUTO_MIGRATE"):
            values["auto_migrate"] = _bool("BRIDGE_AUTO_MIGRATE", env["BRIDGE_AUTO_MIGRATE"])
        if env.get("BRIDGE_RETENTION"):
            values["retention"] = env["BRIDGE_RETENTION"]
        if env.get("BRIDGE_RETENTION_EVERY"):
            values["retention_every"] = _float(
                "BRIDGE_RETENTION_EVERY", env["BRIDGE_RETENTION_EVERY"]
            )
        token = api_token_from_env(env)
        if token is not None:
            values["api_token"] = token
        if env.get("BRIDGE_MAX_BODY"):
            values["max_body"] = _int("BRIDGE_MAX_BODY", env["BRIDGE_MAX_BODY"])
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
            "BRIDGE_AUTO_MIGRATE": "1" if self.auto_migrate else "0",
            "BRIDGE_RETENTION": self.retention or "",
            "BRIDGE_RETENTION_EVERY": repr(self.retention_every),
            "BRIDGE_MAX_BODY": str(self.max_body),
            **({"BRIDGE_API_TOKEN": self.api_token} if self.api_token else {}),
        }


def api_token_from_env(env: Mapping[str, str]) -> str | None:
    """``BRIDGE_API_TOKEN``, else the first line of the file ``BRIDGE_API_TOKEN_FILE`` names
    (a secret mounted by Docker or systemd); None when neither is set."""
    if env.get("BRIDGE_API_TOKEN"):
        return env["BRIDGE_API_TOKEN"].strip()
    path = env.get("BRIDGE_API_TOKEN_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingsError(f"cannot read BRIDGE_API_TOKEN_FILE {path}: {reason}") from None
    if not token:
        raise SettingsError(f"BRIDGE_API_TOKEN_FILE {path} is empty")
    return token


def parse_handlers(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise SettingsError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {text!r}")


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {text!r}") from None


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {text!r}") from None


SECRET_PARAMS = ("password", "passwd", "pwd", "pass", "secret", "token")
"""Query parameters whose value is a secret: exactly one of these names, or any name
containing ``password``, ``passwd``, ``secret`` or ``token`` (``sslpassword``...)."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)
_REDACTED = "***"


def redact_url(url: str) -> str:
    """A URL fit for logs and messages: every secret it may hold replaced by ``***``.

    Read as a person would, not as one parser does, because a password with ``/``,
    ``?``, ``#`` or ``@`` makes parsers disagree: everything between ``://`` and the
    last ``@`` is credentials (the user name before the first ``:`` stays), secret
    query parameters (``?password=``...) lose their value, a fragment is dropped, and
    a string without a scheme is not shown at all. What is left is the host, port,
    path and harmless options, so the message still says where.
    """
    match = _SCHEME.match(url)
    if match is None:
        return "<redacted>"
    scheme, rest = match.groups()
    userinfo: str | None = None
    if not rest.startswith("/") and "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
    hidden_value_runs_on = userinfo is not None and _ends_in_secret_value(userinfo)
    rest, _, fragment = rest.partition("#")
    location, question, query = rest.partition("?")
    if hidden_value_runs_on:
        # ``?password=a@b``: the last ``@`` was inside a secret value, whose tail is here.
        location, question, query = _REDACTED, "", ""
    shown = f"{scheme}://"
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        if "/" in user or "?" in user or "#" in user:
            user = _REDACTED  # no user name has these: the split is not where it seems
        shown += f"{user}:{_REDACTED}@" if colon else f"{user}@"
    shown += location
    if question:
        shown += "?" + _redact_query(query)
    if fragment:
        shown += "#" + _REDACTED
    return shown


def redact_text(text: str, *urls: str) -> str:
    """``text`` (an error message from a driver) with every secret of ``urls`` hidden.

    Drivers quote parts of a URL they could not use ("port could not be cast to
    integer value as 's3cr3t'"); whichever way they split it, no part of a password
    may reach a message.
    """
    for url in urls:
        for secret in sorted(_secrets(url), key=len, reverse=True):
            text = text.replace(secret, _REDACTED)
        if url in text:
            text = text.replace(url, redact_url(url))
    return text


def _secrets(url: str) -> set[str]:
    """Every string that some reading of ``url`` takes for a password or secret value."""
    found: set[str] = set()
    match = _SCHEME.match(url)
    rest = match.group(2) if match else url
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        found.add(userinfo.partition(":")[2])
        first = rest.split("@", 1)[0]  # a parser that stops at the first ``@``
        found.add(first.partition(":")[2])
        try:
            found.add(urlsplit(url).password or "")
        except ValueError:
            pass
    query = rest.partition("?")[2]
    in_secret = False
    for item in re.split(r"[&;]", query):
        name, equals, value = item.partition("=")
        if equals:
            in_secret = _is_secret_name(name)
            if in_secret:
                found.update((value, value.partition("#")[0]))
        elif in_secret:
            found.add(item)
    pieces = {piece for s in found for piece in re.split(r"[/?#@:&;]", s)}
    found |= pieces
    found |= {unquote(s) for s in found}
    return {s for s in found if len(s) >= 3}


def _ends_in_secret_value(text: str) -> bool:
    """Whether ``text`` ends inside the value of a secret query parameter."""
    query = text.partition("?")[2]
    if not query:
        return False
    last = re.split(r"[&;]", query)[-1]
    name, equals, _ = last.partition("=")
    return bool(equals) and _is_secret_name(name)


def _is_secret_name(name: str) -> bool:
    name = unquote(name).strip().lower()
    return name in SECRET_PARAMS or any(
        word in name for word in ("password", "passwd", "secret", "token")
    )


def _redact_query(query: str) -> str:
    """Secret values hidden; so is an item without ``=`` right after one (``password=a&b``
    is more likely a password with ``&`` than an option named ``b``)."""
    items = re.split(r"([&;])", query)
    in_secret = False
    for index in range(0, len(items), 2):
        name, equals, _ = items[index].partition("=")
        if equals:
            in_secret = _is_secret_name(name)
            if in_secret:
                items[index] = f"{name}={_REDACTED}"
        elif in_secret:
            items[index] = _REDACTED
    return "".join(items)
