"""The dashboard's pages and assets as the router serves them: fixed files, no data in them,
nothing outside static/, no inline script or style, no HTML built from strings in the JS."""

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bridge.web.dashboard import STATIC, router

PAGES = ("index.html", "task.html")


@pytest.fixture
def client() -> TestClient:
    web = FastAPI()
    web.include_router(router)
    return TestClient(web)


def test_the_dashboard_and_task_pages_are_the_fixed_shells(client):
    # When the pages are asked for, whatever the task id in the URL
    home = client.get("/")
    hostile = client.get("/tasks/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    nested = client.get("/tasks/run%2Fbuild%2Fstep-1")
    # Then they are the static shells, byte for byte: the id is never written into them
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert home.content == (STATIC / "index.html").read_bytes()
    assert hostile.content == nested.content == (STATIC / "task.html").read_bytes()
    assert b"onerror" not in hostile.content


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/static/app.css", "text/css"),
        ("/static/login.css", "text/css"),
        ("/static/dashboard.js", "text/javascript"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_assets_are_served_with_their_type_and_revalidated_by_etag(client, path, media_type):
    first = client.get(path)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith(media_type)
    again = client.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/static/../dashboard.py",
        "/static/%2e%2e/dashboard.py",
        "/static/..%2f__init__.py",
        "/static/",
        "/static/missing.js",
    ],
)
def test_nothing_outside_static_or_missing_is_served(client, path):
    assert client.get(path).status_code == 404


def test_pages_have_no_inline_script_or_style_and_reference_existing_assets():
    for page in PAGES:
        text = (STATIC / page).read_text()
        # every script is a file (the CSP allows no inline script), no style attribute or block
        assert re.findall(r"<script(?![^>]*\bsrc=)", text) == [], page
        assert "style=" not in text and "<style" not in text, page
        assert not re.search(r"\son[a-z]+=", text), page
        for asset in re.findall(r'(?:src|href)="/static/([^"]+)"', text):
            assert (STATIC / asset).is_file(), (page, asset)


def test_scripts_never_build_html_from_strings():
    for script in sorted(Path(STATIC).glob("*.js")):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (script.name, sink)
