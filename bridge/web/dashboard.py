"""The live dashboard: fixed HTML pages and their assets, all shipped inside the package.

The pages hold no data. Each is a static file whose ES modules call the JSON API and render
every user-supplied string as text, so nothing a user wrote ever passes through a template
(the XSS hole the original dashboard had). The sign-in page (served by ``bridge.web.auth``)
takes its look from ``static/login.css``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).parent / "static"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""What /static serves; any other file is not an asset and is 404."""

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=64)
def _asset(name: str) -> tuple[bytes, str, str] | None:
    """An asset's bytes, media type and ETag; None unless a file of a known type under
    static/ (no ``..`` escapes, no directories)."""
    root = STATIC.resolve()
    path = (root / name).resolve()
    if root not in path.parents or not path.is_file():
        return None
    media_type = MEDIA_TYPES.get(path.suffix)
    if media_type is None:
        return None
    body = path.read_bytes()
    return body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _serve(name: str, request: Request) -> Response:
    found = _asset(name)
    if found is None:
        return Response(status_code=404, content="not found\n", media_type="text/plain")
    body, media_type, etag = found
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type=media_type, headers=headers)


@router.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request) -> Response:
    """Counts, the task table, slots and workers."""
    return _serve("index.html", request)


@router.get("/tasks/{task_id:path}", response_class=HTMLResponse)
def task_page(task_id: str, request: Request) -> Response:
    """One task; the page reads the id from its own URL, the server never writes it in."""
    return _serve("task.html", request)


@router.api_route("/static/{name:path}", methods=["GET", "HEAD"])
def static_asset(name: str, request: Request) -> Response:
    return _serve(name, request)
