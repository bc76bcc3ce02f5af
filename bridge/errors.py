"""The project's one error type.

Every failure a user can cause or fix (bad input, a database or Redis that
cannot be used, a task whose state forbids the request) is a ``BridgeError``
subclass whose message is one line fit to print. Anything else is a bug: the
CLI lets it show its traceback instead of hiding it behind ``error:``.
"""


class BridgeError(Exception):
    """A failure the user can act on; ``str(error)`` is one line without secrets."""
