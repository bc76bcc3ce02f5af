"""The store's errors, in a module of their own so that every store module (the schema
check included, which ``engine`` imports) can raise them without an import cycle."""

from bridge.errors import BridgeError


class StoreError(BridgeError):
    """A database problem the user can act on; the CLI prints it as one line."""


class TaskStateError(StoreError):
    """The task exists but its state does not allow the request."""


class UnknownTask(TaskStateError):
    """No task has the id asked for (the HTTP API answers 404, not 409)."""
