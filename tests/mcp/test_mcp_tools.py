"""The MCP tools in-process (the SDK's client connected to ``build_server``), on a real
SQLite file and a private Redis: the paths the whole-graph tests do not walk."""

import time
from collections.abc import Iterator

import pytest
from mcp import Client
from mcp_flow import call, drive, refused

from bridge.app import App
from bridge.mcp_server import build_server
from bridge.settings import Settings


@pytest.fixture
def app(db_url, redis_server) -> Iterator[App]:
    app = App(Settings.from_env({}, database_url=db_url, redis_url=redis_server.url), create=True)
    try:
        yield app
    finally:
        app.close()


def test_a_failed_claim_goes_back_and_a_cancelled_one_refuses_a_late_completion(app):
    graph = [
        {"id": "ask", "kind": "external", "max_attempts": 2},
        {"id": "after", "kind": "noop", "dependencies": ["ask"]},
    ]

    async def scenario() -> dict:
        async with Client(build_server(app)) as client:
            await call(client, "add_tasks", {"tasks": graph, "run": "r"})
            first = await call(client, "claim_task", {"worker": "agent"})
            failed = await call(
                client,
                "fail_task",
                {"id": "r/ask", "attempt": first["attempt"], "error": "no answer"},
            )
            not_failed = await refused(client, "retry_task", {"id": "r/ask"})
            cancelled = await call(client, "cancel_task", {"id": "r/ask"})
            late = await refused(
                client, "complete_task", {"id": "r/ask", "attempt": first["attempt"]}
            )
            started = time.monotonic()
            stuck = await call(client, "wait_for_tasks", {"run": "r", "timeout": 30})
            waited_for = time.monotonic() - started
            summary = await call(client, "graph_summary", {"run": "r"})
            whole = await call(client, "graph_summary", {})
            again = await call(client, "retry_task", {"id": "r/ask"})
            return {
                "first": first,
                "failed": failed,
                "not_failed": not_failed,
                "cancelled": cancelled,
                "late": late,
                "stuck": stuck,
                "waited_for": waited_for,
                "summary": summary,
                "whole": whole,
                "again": again,
            }

    # Given a run whose first task is external, with two attempts
    # When the agent fails attempt 1, the task is cancelled, and the agent completes late
    seen = drive(scenario, 90)
    # Then the failure left an attempt: the task is available again
    assert seen["first"]["attempt"] == 1 and seen["first"]["id"] == "r/ask"
    assert seen["failed"]["task"]["status"] == "available"
    assert seen["failed"]["task"]["error"] == "no answer"
    assert seen["not_failed"] == (
        "cannot retry task 'r/ask': it is available (only failed or cancelled tasks)"
    )
    # And the cancel stuck, and the late completion was refused
    assert seen["cancelled"]["task"]["status"] == "cancelled"
    assert seen["late"].startswith("stale attempt 1 of task 'r/ask'")
    # And waiting on the run returns at once: nothing more of it can run
    assert seen["stuck"]["outcome"] == "stuck"
    assert seen["stuck"]["states"] == {"r/ask": "cancelled", "r/after": "available"}
    assert any("r/ask" in line for line in seen["stuck"]["problems"])
    assert seen["waited_for"] < 25
    assert seen["summary"]["state"] == "cancelled"
    assert seen["whole"]["counts"] == {"cancelled": 1, "available": 1}
    # And retry_task puts it back
    assert seen["again"]["task"]["status"] == "available"


def test_waiting_past_the_timeout_says_timeout_with_the_states(app):
    async def scenario() -> tuple[dict, float]:
        async with Client(build_server(app)) as client:
            await call(client, "add_tasks", {"tasks": [{"id": "slow", "kind": "external"}]})
            started = time.monotonic()
            waited = await call(client, "wait_for_tasks", {"ids": ["slow"], "timeout": 3})
            return waited, time.monotonic() - started

    # Given a task nobody runs, when an agent waits 3 s for it (more than one slice)
    waited, took = drive(scenario, 60)
    # Then the wait lasted the timeout and says so, with the task's state
    assert waited["outcome"] == "timeout"
    assert waited["states"] == {"slow": "available"}
    assert took >= 2.9


def test_waiting_for_every_task_gives_each_state(app):
    graph = [{"id": "ask", "kind": "external"}, {"id": "other", "kind": "external"}]

    async def scenario() -> dict:
        async with Client(build_server(app)) as client:
            await call(client, "add_tasks", {"tasks": graph})
            for _ in graph:
                got = await call(client, "claim_task", {"worker": "agent"})
                await call(client, "complete_task", {"id": got["id"], "attempt": got["attempt"]})
            nothing = await call(client, "claim_task", {"worker": "agent"})
            return {
                "nothing": nothing,
                "waited": await call(client, "wait_for_tasks", {"timeout": 30}),
            }

    # Given two external tasks an agent claims and completes
    seen = drive(scenario, 60)
    # Then there is nothing more to claim
    assert seen["nothing"] == {"id": None, "task": None, "attempt": None, "lease_expires_at": None}
    # And a wait for every task ends done, with each task's state
    assert seen["waited"]["outcome"] == "done"
    assert seen["waited"]["states"] == {"ask": "done", "other": "done"}
    assert seen["waited"]["counts"] == {"done": 2}


def test_pages_of_tasks_cover_every_task_once(app):
    tasks = [{"id": f"t{n:02}"} for n in range(7)]

    async def scenario() -> list[str]:
        async with Client(build_server(app)) as client:
            await call(client, "add_tasks", {"tasks": tasks})
            seen: list[str] = []
            cursor = None
            while True:
                page = await call(client, "list_tasks", {"limit": 3, "cursor": cursor})
                seen += [t["id"] for t in page["tasks"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    return seen

    # Given 7 tasks, when an agent pages through them 3 at a time
    # Then it sees each once, in the order they were added
    assert drive(scenario, 60) == [t["id"] for t in tasks]


def test_add_tasks_refuses_an_empty_list_as_the_http_api_does(app):
    async def scenario() -> tuple[str, str, dict]:
        async with Client(build_server(app)) as client:
            bare = await refused(client, "add_tasks", {"tasks": []})
            named = await refused(client, "add_tasks", {"tasks": [], "run": "nothing"})
            summary = await call(client, "graph_summary", {})
            return bare, named, summary

    bare, named, summary = drive(scenario, 60)
    assert bare == named == "no tasks given"
    # And no empty run was made
    assert summary["runs"] == 0 and summary["total"] == 0
