"""What the browser tests share: the running stack, what a page must not do, screenshots,
signing in."""

import json
import secrets
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import bridge, screenshot_dir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WATCH_SCRIPT = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""
"""Runs before each page's own scripts: records anything the CSP had to block, so a test
sees an injection even where the CSP stopped it from running."""


@dataclass
class Stack:
    """A running ``bridge serve`` with a dispatcher and a worker behind it."""

    url: str
    token: str
    env: dict[str, str]
    tmp_path: Path

    def add(self, tasks: list[dict[str, Any]]) -> None:
        path = self.tmp_path / f"graph-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(tasks))
        added = bridge("add", "--file", str(path), env=self.env)
        assert added.returncode == 0, added.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # it answered (503 until the dispatcher is up)
    except OSError:
        return False
    return True


@dataclass
class Watched:
    """What a page did that no page of ours should: dialogs and script errors."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def shoot(tab: Any, name: str) -> Path:
    """A full-page screenshot in the session's folder."""
    path = screenshot_dir() / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def sign_in(tab: Any, stack: Stack, path: str = "/") -> None:
    """Open ``path`` signed out: the sign-in page comes, the token takes us to ``path``."""
    tab.goto(path)
    assert "/login" in tab.url, tab.url
    tab.fill("input[name=token]", stack.token)
    tab.click("button[type=submit]")
    tab.wait_for_url(lambda url: "/login" not in url)
