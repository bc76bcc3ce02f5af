# Type information for ``bridge``'s lazily imported names (see bridge/__init__.py):
# type checkers read this stub, the interpreter imports these names on first use.
from bridge.building import Graph as Graph
from bridge.building import TaskRef as TaskRef
from bridge.client import BridgeWarning as BridgeWarning
from bridge.client import Client as Client
from bridge.client import Run as Run
from bridge.errors import BridgeError as BridgeError
from bridge.graph import GraphError as GraphError
from bridge.workers.context import TaskContext as TaskContext
from bridge.workers.registry import handler as handler

__all__ = [
    "handler",
    "Client",
    "Run",
    "BridgeWarning",
    "Graph",
    "TaskRef",
    "GraphError",
    "BridgeError",
    "TaskContext",
]
__version__: str
