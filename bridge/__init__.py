"""bridge: a durable task coordinator (task graph in SQL, executed by RQ workers).

``from bridge import handler`` registers a handler; it imports nothing heavy.
"""

from bridge.workers.registry import handler

__all__ = ["handler"]
__version__ = "0.1.0"
