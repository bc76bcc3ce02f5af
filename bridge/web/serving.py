"""Running the HTTP app: where it may listen, and uvicorn in this process."""

import ipaddress
import socket

from bridge.app import App
from bridge.errors import BridgeError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3335
SHUTDOWN_GRACE = 3
"""Seconds open connections (live streams) get to end on SIGTERM."""


class ServeError(BridgeError):
    """``bridge serve`` cannot listen as asked."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, *, token: str | None) -> None:
    """Without a token the API is open to whoever reaches it: loopback only."""
    if token is None and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host} without a token: anyone who reaches it could"
            " change tasks; set BRIDGE_API_TOKEN (or BRIDGE_API_TOKEN_FILE), or use"
            " --host 127.0.0.1"
        )


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address that cannot be listened on (a port in use, a
    name that does not resolve), before uvicorn would log it over several lines.

    Binds as uvicorn's listener does (``SO_REUSEADDR``) and lets go at once; the
    listener itself is uvicorn's, so a name like ``localhost`` keeps every address
    it resolves to.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        found = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ServeError(f"cannot listen on {where}: {reason.lower()}") from None
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ServeError(f"cannot listen on {where}: {reason.lower()}") from None


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}/"


def serve(app: App, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and shuts down cleanly)."""
    import uvicorn

    from bridge.web.app import create_app

    check_host(host, token=app.settings.api_token)
    check_port(host, port)
    app.engine  # noqa: B018 (open, maybe create, the database before the first request)
    web = create_app(app)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            hub = getattr(web.state, "hub", None)
            if hub is not None:
                hub.close_soon()  # live streams end now, not at the grace's end
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    config = uvicorn.Config(
        web,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        server_header=False,
    )
    Server(config).run()
