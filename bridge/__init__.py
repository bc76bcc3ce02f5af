"""bridge: a durable task coordinator (task graph in SQL, executed by RQ workers).

``from bridge import handler`` registers a handler; it imports nothing heavy, since
every worker imports it. ``from bridge import Client, Graph`` (also ``Run``,
``GraphError``, ``BridgeError``, ``TaskContext``) is the Python API: those names are
imported on first use (``__getattr__``), so a worker never loads what the client needs
(SQLAlchemy).
"""

import importlib
from typing import Any

from bridge.workers.registry import handler

_LAZY = {
    "Client": "bridge.client",
    "Run": "bridge.client",
    "BridgeWarning": "bridge.client",
    "Graph": "bridge.building",
    "TaskRef": "bridge.building",
    "GraphError": "bridge.graph",
    "BridgeError": "bridge.errors",
    "TaskContext": "bridge.workers.context",
}
"""Public names -> the module that defines them, imported when first asked for."""

__all__ = ["handler", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
