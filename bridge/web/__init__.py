"""``bridge serve``: the HTTP API, its auth, the live stream, health and metrics.

``create_app`` (in ``bridge.web.app``) builds the ASGI app; every route is a thin call
into ``bridge.usecases``.
"""
