"""A real browser against a real ``bridge serve`` (token auth on), dispatcher and worker.

Playwright drives Debian's Chromium (never a downloaded browser). Without /usr/bin/chromium
the tests skip, except under CI, where they fail. Screenshots go to ``screenshot_dir()``,
which the session's summary prints (tests/conftest.py).
"""

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Processes, wait_until

from browser.stack import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WATCH_SCRIPT,
    Stack,
    Watched,
    answers,
    free_port,
    shoot,
)


@pytest.fixture
def stack(tmp_path: Path, bridge_env: dict[str, str], processes: Processes) -> Stack:
    token = secrets.token_urlsafe(24)
    env = {**bridge_env, "BRIDGE_API_TOKEN": token}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.start("serve", "--host", "127.0.0.1", "--port", str(port), env=env)
    processes.start("dispatch", env=env)
    processes.start("worker", "--quiet", env=env)
    try:
        wait_until(lambda: answers(url + "/healthz"), timeout=60, every=0.2)
    except AssertionError:
        raise AssertionError("bridge serve did not answer\n" + processes.logs()) from None
    return Stack(url=url, token=token, env=env, tmp_path=tmp_path)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs the chromium package)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def watched() -> Watched:
    return Watched()


@pytest.fixture
def page(browser: Any, stack: Stack, watched: Watched, request: pytest.FixtureRequest) -> Any:
    """A fresh browser context on the stack; a dialog or an uncaught script error fails."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1360, "height": 900})
    context.add_init_script(WATCH_SCRIPT)
    context.set_default_timeout(30_000)
    tab = context.new_page()

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.on("pageerror", lambda error: watched.errors.append(str(error)))
    yield tab
    try:
        shoot(tab, request.node.name + "-last")
    finally:
        context.close()
    assert watched.dialogs == [], f"a dialog opened: {watched.dialogs}"
    assert watched.errors == [], f"script errors: {watched.errors}"
