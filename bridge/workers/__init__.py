"""What runs inside an RQ worker: the job entry point and the handler registry.

Users register handlers with::

    from workers import handler

    @handler("resize")
    def resize(payload):
        ...
"""

from bridge.workers.registry import HandlerError, get_handler, handler, is_registered, registered

__all__ = ["HandlerError", "get_handler", "handler", "is_registered", "registered"]
