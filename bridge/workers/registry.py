"""The handler registry: the only code a worker runs is code registered here.

A task names its handler by ``kind``; no import path, pickle or shell command
ever comes from task data. A second registration under the same name fails at
import time, so a typo shows at start-up rather than when the task runs.
"""

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from bridge.errors import BridgeError

if TYPE_CHECKING:  # a worker imports this module first: nothing more at run time
    from bridge.workers.context import TaskContext

Handler = Callable[..., Any]
"""``f(payload)``, or ``f(payload, ctx)`` when registered with ``context=True``."""
F = TypeVar("F", bound=Callable[[Any], Any])
C = TypeVar("C", bound="Callable[[Any, TaskContext], Any]")

_HANDLERS: dict[str, Handler] = {}
_WANTS_CONTEXT: set[str] = set()
"""Kinds whose handler was registered with ``context=True``: called ``f(payload, ctx)``."""


class HandlerError(BridgeError, LookupError):
    """No handler is registered for a task's kind, or a handler module will not load."""


@overload
def handler(name: str, *, context: Literal[False] = False) -> Callable[[F], F]: ...


@overload
def handler(name: str, *, context: Literal[True]) -> Callable[[C], C]: ...


def handler(name: str, *, context: bool = False) -> Callable[[Any], Any]:
    """Register a function as the handler of tasks of kind ``name``.

    The function takes the task's JSON payload (``None`` when there is none) and
    returns a JSON-serialisable value, stored as the task's output. With
    ``context=True`` it is called ``f(payload, ctx)``: ``ctx`` (a
    ``bridge.workers.context.TaskContext``) holds the task's id, run, attempt, its
    dependencies' outputs (``ctx.inputs``), ``ctx.progress(...)`` and ``ctx.log``.
    """
    if not name or not isinstance(name, str):
        raise ValueError("a handler needs a non-empty name")

    def register(function: Handler) -> Handler:
        existing = _HANDLERS.get(name)
        if existing is not None and existing is not function:
            raise ValueError(
                f"a handler named {name!r} is already registered"
                f" ({existing.__module__}.{existing.__qualname__})"
            )
        _HANDLERS[name] = function
        if context:
            _WANTS_CONTEXT.add(name)
        else:
            _WANTS_CONTEXT.discard(name)
        return function

    return register


def get_handler(name: str) -> Handler:
    _load_builtins()
    try:
        return _HANDLERS[name]
    except KeyError:
        known = ", ".join(sorted(_HANDLERS)) or "none"
        raise HandlerError(f"no handler registered for kind {name!r} (known: {known})") from None


def wants_context(name: str) -> bool:
    """Whether the handler of ``name`` is called with the task's context."""
    return name in _WANTS_CONTEXT


def is_registered(name: str) -> bool:
    _load_builtins()
    return name in _HANDLERS


def registered() -> list[str]:
    _load_builtins()
    return sorted(_HANDLERS)


def load_modules(modules: Iterable[str]) -> None:
    """Import the user's handler modules (``BRIDGE_HANDLERS``), failing loudly.

    The working directory goes first on ``sys.path``, as ``rq worker`` does with
    its ``--path .``: the ``bridge`` console script's path holds only its own
    folder, so ``BRIDGE_HANDLERS=myproject.handlers`` run from the project
    folder would not import otherwise.
    """
    _load_builtins()
    modules = list(modules)
    if modules:
        cwd = os.getcwd()
        if not sys.path or sys.path[0] != cwd:
            sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise HandlerError(f"cannot import handler module {module!r}: {exc}") from None


def _load_builtins() -> None:
    importlib.import_module("bridge.workers.builtin")
