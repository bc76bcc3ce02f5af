"""Who may call ``bridge serve``: a bearer token, or the sign-in cookie with CSRF.

One ASGI middleware does what every response needs before any route runs: it
refuses a body over the limit (413), checks auth when a token is set, and adds the
security headers (a Content-Security-Policy without inline scripts or styles).
The session cookie holds an HMAC of the token, never the token; a state-changing
request signed in by cookie must echo the ``bridge_csrf`` cookie in ``X-CSRF-Token``.
"""

import hashlib
import hmac
import html
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

SESSION_COOKIE = "bridge_session"
CSRF_COOKIE = "bridge_csrf"
CSRF_HEADER = b"x-csrf-token"
OPEN_PATHS = ("/healthz", "/login", "/logout")
"""Routes anyone may call; ``/logout`` only clears cookies."""
OPEN_PREFIXES = ("/static/",)
PAGE_PREFIXES = ("/tasks/",)
"""HTML pages: an unauthenticated request is sent to the sign-in page, not given 401."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def session_value(token: str) -> str:
    """The session cookie's value: an HMAC keyed by the token (so it changes with it)."""
    return hmac.new(token.encode(), b"bridge_session v1", hashlib.sha256).hexdigest()


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, else ``/``."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    return target


def cookies_of(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in headers:
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001 (a malformed cookie is no cookie)
                continue
    return {key: morsel.value for key, morsel in jar.items()}


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def login_page(*, error: str | None = None, next_path: str = "/") -> str:
    """The sign-in form (no inline script or style: the CSP forbids them)."""
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Sign in · bridge</title>"
        '<link rel="stylesheet" href="/static/login.css"></head>'
        '<body><main class="login"><h1>bridge</h1>'
        f"{message}"
        '<form method="post" action="/login">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password"'
        " autofocus required>"
        f'<input type="hidden" name="next" value="{html.escape(safe_next(next_path))}">'
        '<button type="submit">Sign in</button></form></main></body></html>\n'
    )


class Guard:
    """The ASGI middleware: body limit, auth, security headers."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = headers
            await send(message)

        headers = scope.get("headers", [])
        length = header(headers, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _json(send_secured, 413, f"request body over {self.max_body} bytes")
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(send_secured)
            return
        await self.app(as_json(scope), self._limited(receive), send_secured)

    def _limited(self, receive: Receive) -> Receive:
        """A body sent without a length (chunked) is cut off at the limit too."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped

    def _refusal(self, scope: Scope) -> Callable[[Send], Awaitable[None]] | None:
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        if self.token is None or self.session is None:
            return _cross_site_refusal(scope)
        headers = scope.get("headers", [])
        authorization = header(headers, b"authorization") or ""
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and same(credential.strip(), self.token):
            return None
        cookies = cookies_of(headers)
        if same(cookies.get(SESSION_COOKIE), self.session):
            if scope.get("method", "GET") not in UNSAFE_METHODS:
                return None
            csrf = cookies.get(CSRF_COOKIE)
            if csrf and same(header(headers, CSRF_HEADER), csrf):
                return None
            return lambda send: _json(send, 403, "missing or wrong X-CSRF-Token header")
        if _is_page(scope):
            query = scope.get("query_string", b"").decode("latin-1")
            raw = scope.get("raw_path") or path.encode()  # as sent: an encoded id stays so
            target = raw.decode("latin-1") + (f"?{query}" if query else "")
            location = "/login?next=" + quote(target, safe="")
            return lambda send: _redirect(send, location)
        if authorization:
            return lambda send: _json(send, 401, "wrong API token")
        return lambda send: _json(
            send, 401, "authentication required: send Authorization: Bearer <token>"
        )


def as_json(scope: Scope) -> Scope:
    """The API's bodies are JSON whatever the Content-Type says: ``curl -d '{...}'``
    (form-encoded) or a client that sends none is read as JSON on every ``/api/`` route,
    as ``POST /api/tasks`` always did, not refused as "not an object". Safe: a cross-site
    page cannot send one (a token, or the check on its Origin, stops it first)."""
    if scope.get("method") not in UNSAFE_METHODS or not scope.get("path", "").startswith("/api/"):
        return scope
    headers = scope.get("headers", [])
    given = (header(headers, b"content-type") or "").split(";")[0].strip().lower()
    if given == "application/json" or given.endswith("+json"):
        return scope
    kept = [(k, v) for k, v in headers if k != b"content-type"]
    return {**scope, "headers": [*kept, (b"content-type", b"application/json")]}


def is_loopback_name(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]`` (a port after it or not)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _cross_site_refusal(scope: Scope) -> Callable[[Send], Awaitable[None]] | None:
    """Without a token anyone on this host may call, but no web page elsewhere: a Host
    that is not a loopback name is DNS rebinding, and a state-changing request whose
    Origin is not a loopback page is a cross-site one (a form or ``fetch`` that needs no
    preflight): 421 and 403. ``/mcp`` checks the same in the SDK's own way."""
    headers = scope.get("headers", [])
    host = header(headers, b"host")
    if host is not None and not is_loopback_name(host):
        return lambda send: _json(  # 421 Misdirected Request, as the MCP SDK answers it
            send, 421, "refused: without BRIDGE_API_TOKEN only loopback host names are served"
        )
    if scope.get("method", "GET") in UNSAFE_METHODS:
        origin = header(headers, b"origin")
        if origin is not None and not _is_loopback_origin(origin):
            return lambda send: _json(
                send, 403, "refused: a cross-site request (its Origin is not a loopback page)"
            )
    return None


def _is_loopback_origin(origin: str) -> bool:
    scheme, sep, rest = origin.strip().partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and is_loopback_name(rest)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without a length passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")


def _is_page(scope: Scope) -> bool:
    path = scope.get("path", "")
    return scope.get("method") == "GET" and (path == "/" or path.startswith(PAGE_PREFIXES))


async def _json(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            + ([(b"www-authenticate", b"Bearer")] if status == 401 else []),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})
