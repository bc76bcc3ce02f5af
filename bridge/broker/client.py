"""Connecting to Redis, and turning Redis's errors into bridge's own."""

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bridge.errors import BridgeError
from bridge.settings import redact_text, redact_url

RETRIES = 20
RETRY_CAP = 1.5
"""A resilient client retries a command for about 25 s: long enough to ride out
a Redis restart, short enough that a Redis that is really gone shows up."""


class BrokerError(BridgeError):
    """Redis cannot be used; the message names the URL (password hidden)."""


class BrokerUnavailable(BrokerError):
    """Redis stopped answering (or answered with an error) in the middle of work.

    Long-running services catch it, back off and carry on: the database holds
    everything, and what Redis lost is sent again once it answers.
    """


F = TypeVar("F", bound=Callable[..., Any])


def translated(method: F) -> F:
    """Turn any ``RedisError`` raised by ``method`` into ``BrokerUnavailable``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis error: {first_line(exc)}") from exc

    return wrapper  # type: ignore[return-value]


def connect(url: str, *, check: bool = True, resilient: bool = False) -> redis.Redis:
    """A Redis client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``).

    ``check`` fails at once, in one line, if Redis does not answer now. A
    ``resilient`` client (for the long-running services) then retries commands
    through a Redis restart instead of letting the process die.
    """
    try:
        options: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
        if check:
            probe = redis.Redis.from_url(url, **options)
            try:
                probe.ping()
            except RedisError as exc:
                raise BrokerError(
                    f"cannot reach Redis at {redact_url(url)}: {redact_text(first_line(exc), url)}"
                ) from None
            finally:
                probe.close()
        if resilient:
            options["retry"] = Retry(ExponentialBackoff(cap=RETRY_CAP, base=0.05), RETRIES)
            options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise BrokerError(
            f"not a Redis URL: {redact_url(url)} ({redact_text(first_line(exc), url)})"
        ) from None


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
