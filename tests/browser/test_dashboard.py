"""The dashboard in a real browser (Chromium through Playwright) over a real stack: sign-in,
counts, a task's page, retry, live updates, the graph, and hostile strings shown as text."""

import time
from typing import Any

from helpers import bridge_json, wait_until
from playwright.sync_api import expect

from browser.stack import Stack, Watched, shoot, sign_in

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"
SVG = "<svg onload=alert(3)>"


def status_of(stack: Stack, task_id: str) -> str:
    return {t["id"]: t["status"] for t in bridge_json("list", env=stack.env)}[task_id]


def row(tab: Any, task_id: str) -> Any:
    """The task table's row of a task (found by its link's exact text)."""
    return tab.locator("#rows tr").filter(has=tab.get_by_role("link", name=task_id, exact=True))


def count(tab: Any, status: str) -> Any:
    return tab.locator(f'#counts button[data-status="{status}"] .n')


def test_sign_in_see_counts_open_a_failed_task_retry_it_and_see_its_graph(page, stack, tmp_path):
    # Given a chain a -> b -> c where b fails until a flag file exists
    flag = tmp_path / "fixed"
    stack.add(
        [
            {"id": "a", "description": "first", "kind": "echo", "payload": "hello"},
            {
                "id": "b",
                "description": "needs the flag",
                "kind": "fail_until",
                "payload": {"flag": str(flag)},
                "max_attempts": 1,
                "dependencies": ["a"],
            },
            {"id": "c", "description": "last", "kind": "echo", "payload": 3, "dependencies": ["b"]},
        ]
    )
    wait_until(lambda: status_of(stack, "b") == "failed", timeout=60)
    # When a person opens the dashboard and signs in with the token
    sign_in(page, stack, "/")
    # Then the counts show one done, one failed, one waiting
    expect(count(page, "done")).to_have_text("1")
    expect(count(page, "failed")).to_have_text("1")
    expect(count(page, "available")).to_have_text("1")
    expect(count(page, "")).to_have_text("3")
    expect(row(page, "b").locator(".badge")).to_have_text("failed")
    shoot(page, "dashboard-signed-in")
    # When they open the failed task from the table with the keyboard (j j Enter)
    for key in ("j", "j", "k", "j"):
        page.locator("body").press(key)
    expect(page.locator("#rows tr.selected")).to_have_attribute("data-id", "b")
    page.locator("body").press("Enter")
    page.wait_for_url("**/tasks/b")
    # Then its page shows the state, the error, its neighbours and the why line
    expect(page.locator("#task-status .badge")).to_have_text("failed")
    expect(page.locator("#error")).to_contain_text("not yet")
    expect(page.locator("#dependencies")).to_contain_text("a")
    expect(page.locator("#dependents")).to_contain_text("c")
    expect(page.locator("#why")).not_to_be_empty()
    expect(page.locator("#retry")).to_be_enabled()
    expect(page.locator("#cancel")).to_be_disabled()
    # And the graph is drawn with states as colours, the task emphasised
    nodes = page.locator("#graph svg a.node")
    expect(nodes).to_have_count(3)
    expect(page.locator('#graph a.node[data-id="a"]')).to_have_class("node st-done")
    expect(page.locator('#graph a.node[data-id="b"]')).to_have_class("node st-failed current")
    expect(page.locator("#graph path.edge")).to_have_count(2)
    shoot(page, "task-failed")
    # When the cause is fixed and they press r (Retry)
    flag.write_text("ok")
    page.locator("body").press("r")
    # Then the task runs again and shows done without a reload, and so does its dependent
    expect(page.locator("#task-status .badge")).to_have_text("done", timeout=60_000)
    expect(page.locator('#graph a.node[data-id="c"]')).to_have_class("node st-done", timeout=60_000)
    expect(page.locator("#output")).to_have_text("recovered")
    assert status_of(stack, "b") == "done"
    shoot(page, "task-retried")
    # And a graph node leads to that task's page
    page.locator('#graph a.node[data-id="c"]').click()
    page.wait_for_url("**/tasks/c")
    expect(page.locator("#task-id")).to_have_text("c")


def test_a_task_that_finishes_shows_done_live_without_a_reload(page, stack, tmp_path):
    # Given a signed-in dashboard showing a task that is working
    flag = tmp_path / "finish"
    stack.add(
        [
            {
                "id": "slow",
                "description": "runs until told",
                "kind": "wait_for",
                "payload": {"flag": str(flag)},
            }
        ]
    )
    sign_in(page, stack, "/")
    expect(row(page, "slow").locator(".badge")).to_have_text("working", timeout=60_000)
    expect(count(page, "done")).to_have_text("0")
    expect(count(page, "working")).to_have_text("1")
    page.evaluate("window.__same_page = true")
    # When it finishes
    flag.write_text("go")
    wait_until(lambda: status_of(stack, "slow") == "done", timeout=60, every=0.05)
    finished = time.monotonic()
    # Then the row and the counts show it done, on the same page (no reload)
    expect(row(page, "slow").locator(".badge")).to_have_text("done", timeout=10_000)
    shown = time.monotonic() - finished
    expect(count(page, "done")).to_have_text("1", timeout=10_000)
    expect(count(page, "working")).to_have_text("0", timeout=10_000)
    assert page.evaluate("window.__same_page") is True
    print(f"done shown {shown:.2f}s after the database had it")
    assert shown < 5, f"done shown only after {shown:.2f}s"
    shoot(page, "dashboard-live-done")


def test_hostile_ids_descriptions_outputs_and_errors_are_shown_as_text(
    page, stack, watched: Watched
):
    # Given tasks whose id, description and output (or error) are HTML and script
    stack.add(
        [
            {"id": IMG, "description": IMG, "kind": "echo", "payload": IMG},
            {
                "id": SCRIPT,
                "description": SCRIPT,
                "kind": "echo",
                "payload": SCRIPT,
                "dependencies": [IMG],
            },
            {
                "id": SVG,
                "description": SVG,
                "kind": "fail",
                "payload": {"message": SVG},
                "max_attempts": 1,
                "dependencies": [SCRIPT],
            },
        ]
    )
    wait_until(lambda: status_of(stack, SVG) == "failed", timeout=60)
    # When a person looks at the dashboard, searches, and opens each task
    sign_in(page, stack, "/")
    for text in (IMG, SCRIPT, SVG):
        expect(row(page, text)).to_have_count(1)
    page.locator("body").press("/")
    page.keyboard.type("script")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(row(page, SCRIPT).locator("td.desc")).to_have_text(SCRIPT)
    page.keyboard.press("Escape")
    shoot(page, "hostile-dashboard")
    assert_nothing_injected(page, watched)
    for task_id, shown in ((IMG, IMG), (SCRIPT, SCRIPT), (SVG, SVG)):
        page.goto("/")
        page.get_by_role("link", name=task_id, exact=True).first.click()
        page.wait_for_url("**/tasks/**")
        # Then each string appears as itself, as text, everywhere
        expect(page.locator("#task-id")).to_have_text(task_id)
        expect(page.locator("#description")).to_have_text(task_id)
        if task_id == SVG:
            expect(page.locator("#error")).to_contain_text(shown)
        else:
            expect(page.locator("#output")).to_have_text(shown)
        expect(page.locator("#graph svg a.node")).to_have_count(3)
        expect(page.locator("#events li").first).to_be_visible()
        shoot(page, "hostile-task-" + str(len(task_id)))
        # And no markup from the data became elements, no script ran, no dialog opened
        assert_nothing_injected(page, watched)


def assert_nothing_injected(page: Any, watched: Watched) -> None:
    page.wait_for_timeout(300)  # give an injected onerror/onload its chance to fire
    found = page.evaluate(
        """() => ({
            imgs: document.querySelectorAll("img").length,
            handlers: document.querySelectorAll("[onerror], [onload]").length,
            scripts: [...document.scripts].map((s) => s.src || "inline"),
            svgScripts: document.querySelectorAll("svg script, svg svg").length,
            violations: window.__violations,
        })"""
    )
    assert found["imgs"] == 0, found
    assert found["handlers"] == 0, found
    assert all(src.endswith(".js") for src in found["scripts"]), found
    assert found["svgScripts"] == 0, found
    assert found["violations"] == [], found
    assert watched.dialogs == [], watched.dialogs


def test_cancel_from_the_task_page_stops_a_working_task(page, stack, tmp_path):
    # Given a task that is working (it would run until a file appears)
    stack.add(
        [
            {
                "id": "stuck",
                "description": "never told to finish",
                "kind": "wait_for",
                "payload": {"flag": str(tmp_path / "never")},
            }
        ]
    )
    wait_until(lambda: status_of(stack, "stuck") == "working", timeout=60)
    # When a person opens its page and presses Cancel
    sign_in(page, stack, "/tasks/stuck")
    expect(page.locator("#task-status .badge")).to_have_text("working")
    expect(page.locator("#retry")).to_be_disabled()
    page.get_by_role("button", name="Cancel").click()
    # Then the task is cancelled, the page says so, and it may now be retried
    expect(page.locator("#task-status .badge")).to_have_text("cancelled")
    expect(page.locator("#message")).to_have_text("Cancelled.")
    expect(page.locator("#retry")).to_be_enabled()
    expect(page.locator("#cancel")).to_be_disabled()
    expect(page.locator("#events")).to_contain_text("cancelled by user")
    assert status_of(stack, "stuck") == "cancelled"
    shoot(page, "task-cancelled")
