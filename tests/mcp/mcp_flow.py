"""What the MCP tests share: calling a tool through the SDK's client, and the whole
agent-in-the-graph scenario, driven the same over stdio and over HTTP."""

import concurrent.futures
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from mcp import Client

T = TypeVar("T")

TOOLS = {
    "add_tasks",
    "list_tasks",
    "get_task",
    "task_events",
    "retry_task",
    "cancel_task",
    "wait_for_tasks",
    "graph_summary",
    "claim_task",
    "heartbeat_task",
    "complete_task",
    "fail_task",
}

GRAPH = [
    {"id": "fetch", "kind": "echo", "payload": {"n": 1}},
    {
        "id": "review",
        "kind": "external",
        "description": "an agent reviews",
        "dependencies": ["fetch"],
    },
    {"id": "publish", "kind": "echo", "payload": {"n": 2}, "dependencies": ["review"]},
]
"""An RQ task, then an external one an agent does, then an RQ task waiting on it."""


async def call(client: Client, name: str, arguments: dict[str, Any]) -> Any:
    """A tool's structured result; fails the test with the tool's error text."""
    result = await client.call_tool(name, arguments)
    text = result.content[0].text if result.content else ""
    assert not result.is_error, f"{name} failed: {text}"
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(text)


async def refused(client: Client, name: str, arguments: dict[str, Any]) -> str:
    """The one-line error text of a call that must fail."""
    result = await client.call_tool(name, arguments)
    assert result.is_error, f"{name} succeeded: {result.content}"
    [content] = result.content
    return content.text


async def assert_lists_every_tool(client: Client) -> None:
    listed = (await client.list_tools()).tools
    assert {tool.name for tool in listed} == TOOLS
    for tool in listed:
        assert tool.description and len(tool.description) > 30, tool.name
        assert tool.input_schema["type"] == "object", tool.name
    schemas = {tool.name: tool.input_schema for tool in listed}
    assert schemas["complete_task"]["required"] == ["id", "attempt"]
    assert schemas["heartbeat_task"]["properties"]["attempt"]["type"] == "integer"
    assert set(schemas["wait_for_tasks"]["required"]) == {"timeout"}


async def run_graph_with_an_external_task(client: Client, run: str) -> dict[str, Any]:
    """Add the graph as ``run``, claim its external task when it is ready, complete it,
    prove a stale completion is refused, and wait for the run to finish. Returns what
    the scenario saw, for the test to check."""
    added = await call(client, "add_tasks", {"tasks": GRAPH, "run": run})
    assert added["ids"] == [f"{run}/fetch", f"{run}/review", f"{run}/publish"]
    assert added["run"] == run
    review = f"{run}/review"
    # The agent polls for work: nothing to claim until 'fetch' is done on an RQ worker.
    claimed: dict[str, Any] = {"task": None}
    deadline = time.monotonic() + 60
    while claimed["task"] is None:
        assert time.monotonic() < deadline, "the external task never became claimable"
        claimed = await call(client, "claim_task", {"worker": "agent-1", "kinds": ["external"]})
    assert claimed["task"]["id"] == review
    assert claimed["task"]["status"] == "working"
    attempt = claimed["attempt"]
    assert attempt == 1 and claimed["lease_expires_at"]
    beat = await call(client, "heartbeat_task", {"id": review, "attempt": attempt})
    assert beat["lease_expires_at"] >= claimed["lease_expires_at"]
    # A completion for an attempt that is not the current one changes nothing.
    stale = await refused(
        client, "complete_task", {"id": review, "attempt": attempt + 1, "output": "wrong"}
    )
    done = await call(
        client, "complete_task", {"id": review, "attempt": attempt, "output": {"ok": True}}
    )
    assert done["task"]["status"] == "done"
    # The same completion again is a duplicate: refused, and the output stays.
    duplicate = await refused(
        client, "complete_task", {"id": review, "attempt": attempt, "output": "again"}
    )
    waited = await call(client, "wait_for_tasks", {"run": run, "timeout": 60})
    summary = await call(client, "graph_summary", {"run": run})
    detail = await call(client, "get_task", {"id": review})
    events = await call(client, "task_events", {"id": review})
    page = await call(client, "list_tasks", {"run": run, "limit": 2})
    return {
        "stale": stale,
        "duplicate": duplicate,
        "waited": waited,
        "summary": summary,
        "detail": detail,
        "events": events,
        "page": page,
    }


def assert_graph_finished(seen: dict[str, Any], run: str) -> None:
    review = f"{run}/review"
    assert seen["stale"] == (
        f"stale attempt 2 of task {review!r}: the task is at attempt 1 (working); nothing changed"
    )
    assert seen["duplicate"] == (
        f"stale attempt 1 of task {review!r}: that attempt already ended (the task is done);"
        " nothing changed"
    )
    assert seen["waited"]["outcome"] == "done", seen["waited"]
    assert seen["waited"]["states"] == {
        f"{run}/fetch": "done",
        f"{run}/review": "done",
        f"{run}/publish": "done",
    }
    assert seen["summary"]["state"] == "done"
    assert seen["summary"]["counts"] == {"done": 3}
    assert seen["detail"]["output"] == {"ok": True}
    assert seen["detail"]["worker"] == "agent-1"
    assert [e["to_status"] for e in seen["events"]["events"]][-1] == "done"
    assert len(seen["page"]["tasks"]) == 2 and seen["page"]["next_cursor"]


def drive(scenario: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run an async scenario to its end, failing the test if it takes over ``timeout``.

    The scenario gets a thread of its own: Playwright's sync API (the browser tests, which
    may share this xdist worker) leaves an event loop running on the main thread, and
    ``anyio.run`` refuses to start inside one."""

    async def bounded() -> T:
        with anyio.fail_after(timeout):
            return await scenario()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, bounded).result()
