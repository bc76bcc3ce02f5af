"""bridge: a durable task coordinator (task graph in SQL, executed by RQ workers)."""

__version__ = "0.1.0"
