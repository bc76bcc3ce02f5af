"""``create_app``: the ASGI app ``bridge serve`` runs.

It holds one ``App`` (settings, database, Redis) for every request, one ``EventHub``
for every SSE client, and includes the optional parts that other modules provide
when they are installed: the dashboard, external-task claims and the MCP server.
"""

import contextlib
import importlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge import usecases
from bridge.app import App
from bridge.errors import BridgeError
from bridge.graph import DependencyError, DuplicateIdError
from bridge.web import api, auth, metrics
from bridge.web.stream import EventHub

OPTIONAL_ROUTERS = ("bridge.web.claims", "bridge.web.dashboard")
"""Modules whose ``router`` is included when they exist."""
MCP_MODULE = "bridge.mcp_server"


def optional_module(name: str) -> ModuleType | None:
    """The module, or None when it is not there (any other import error is a bug: raised)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def error_status(exc: BridgeError) -> int:
    """The HTTP status of a use case's error."""
    from bridge.broker import BrokerError
    from bridge.store import StoreError, TaskStateError, UnknownTask

    if isinstance(exc, UnknownTask):
        return 404
    if isinstance(exc, TaskStateError):
        return 409
    if isinstance(exc, DuplicateIdError):
        return 409
    if isinstance(exc, DependencyError):
        return 422
    stale = getattr(usecases, "StaleAttempt", None)
    if stale is not None and isinstance(exc, stale):
        return 409
    if isinstance(exc, (BrokerError, StoreError)):
        return 503
    return 400


def error_response(status: int, message: str) -> JSONResponse:
    line = " ".join(message.split()) or "error"
    return JSONResponse({"error": line}, status_code=status)


def create_app(app: App) -> FastAPI:
    """The HTTP API (and whatever optional parts are installed) over ``app``."""
    mcp = optional_module(MCP_MODULE)
    mcp_app = mcp.http_app(app) if mcp is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(web: FastAPI) -> AsyncIterator[None]:
        hub = EventHub(app)
        web.state.hub = hub
        await hub.start()
        async with contextlib.AsyncExitStack() as stack:
            if mcp is not None:
                await stack.enter_async_context(mcp.lifespan(app))
            try:
                yield
            finally:
                await hub.stop()

    web = FastAPI(
        title="bridge",
        summary="A durable task coordinator: its task graph over HTTP",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    web.state.bridge = app
    web.state.counts = usecases.LiveCounts()

    @web.exception_handler(BridgeError)
    async def bridge_error(_request: Request, exc: BridgeError) -> JSONResponse:
        return error_response(error_status(exc), str(exc))

    @web.exception_handler(api.HttpError)
    async def http_error(_request: Request, exc: api.HttpError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @web.exception_handler(auth.BodyTooLarge)
    async def too_large(_request: Request, exc: auth.BodyTooLarge) -> JSONResponse:
        return error_response(413, str(exc))

    @web.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "the body is not valid JSON")
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "header"))
        return error_response(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @web.exception_handler(StarletteHTTPException)
    async def http_exception(_request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    @web.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}")

    web.include_router(api.router)
    web.include_router(metrics.router)
    web.include_router(_login_router(app))
    for name in OPTIONAL_ROUTERS:
        module = optional_module(name)
        if module is not None:
            web.include_router(module.router)
    if mcp_app is not None:
        # ``/mcp`` itself too: an MCP client POSTs to the URL as given and a redirect to
        # ``/mcp/`` is not one every client follows.
        web.router.add_route("/mcp", mcp_app, include_in_schema=False)
        web.mount("/mcp", mcp_app)
    web.add_middleware(EmptyQueryIsAbsent)
    web.add_middleware(auth.Guard, token=app.settings.api_token, max_body=app.settings.max_body)
    return web


class EmptyQueryIsAbsent:
    """``GET /api/tasks?status=&q=&run=&limit=&cursor=`` (a form, or a client that sends
    every parameter) means no filter: on a GET of ``/api/``, ``name=`` is as if absent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if query and scope.get("method") == "GET" and scope.get("path", "").startswith("/api/"):
            kept = [part for part in query.split(b"&") if part.partition(b"=")[2]]
            scope = {**scope, "query_string": b"&".join(kept)}
        await self.app(scope, receive, send)


def _login_router(app: App) -> Any:
    from fastapi import APIRouter

    router = APIRouter()
    token = app.settings.api_token
    secure_cookies = False  # served over plain HTTP on loopback by default

    @router.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next: str = "/") -> HTMLResponse:
        return HTMLResponse(auth.login_page(next_path=next))

    @router.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(
        token_given: Annotated[str, Form(alias="token")] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        if token is None:
            return RedirectResponse(auth.safe_next(next), status_code=303)
        if not auth.same(token_given, token):
            return HTMLResponse(
                auth.login_page(error="wrong token", next_path=next), status_code=401
            )
        response = RedirectResponse(auth.safe_next(next), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            auth.session_value(token),
            httponly=True,
            samesite="strict",
            path="/",
            secure=secure_cookies,
        )
        response.set_cookie(
            auth.CSRF_COOKIE,
            auth.new_csrf(),
            httponly=False,
            samesite="strict",
            path="/",
            secure=secure_cookies,
        )
        return response

    @router.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        response.delete_cookie(auth.CSRF_COOKIE, path="/", samesite="strict")
        return response

    return router


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bridge")
    except PackageNotFoundError:
        return "0"
