"""The MCP server over streamable HTTP at ``/mcp`` on a real ``bridge serve`` with a token,
driven by the SDK's own client, with a real dispatcher and RQ worker on a private Redis."""

import socket
import time

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_flow import (
    assert_graph_finished,
    assert_lists_every_tool,
    drive,
    refused,
    run_graph_with_an_external_task,
)

TOKEN = "mcp-test-token-7f3a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(processes, env: dict[str, str]) -> str:
    """Start ``bridge serve`` and return its base URL once it answers."""
    port = free_port()
    process = processes.start("serve", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, processes.logs()
        try:
            httpx.get(url + "/healthz", timeout=5)
            return url
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"bridge serve did not answer:\n{processes.logs()}")


async def scenario(url: str, token: str | None, run: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            await assert_lists_every_tool(client)
            seen = await run_graph_with_an_external_task(client, run)
            seen["bad argument"] = await refused(
                client, "claim_task", {"worker": "agent-1", "kinds": "external"}
            )
            return seen


def test_an_agent_over_http_runs_a_graph_with_an_external_task(bridge_env, processes):
    # Given bridge serve with a token, a dispatcher and an RQ worker on a private Redis
    env = {**bridge_env, "BRIDGE_API_TOKEN": TOKEN}
    url = serve(processes, env)
    processes.start("dispatch", env=env)
    processes.start("worker", "--quiet", env=env)
    # When an MCP client without the token knocks at /mcp
    knocked = httpx.post(
        url + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"Accept": "application/json, text/event-stream"},
        timeout=30,
    )
    # Then it is turned away like any API request
    assert knocked.status_code == 401
    assert TOKEN not in knocked.text
    # When the SDK's client with the token lists the tools and runs the graph at /mcp
    seen = drive(lambda: scenario(url + "/mcp", TOKEN, "nightly"), 180)
    # Then the graph finished, the stale and duplicate completions were refused,
    assert_graph_finished(seen, "nightly")
    # and a bad argument is a one-line tool error
    assert seen["bad argument"].startswith("bad argument(s): kinds: ")
    assert "\n" not in seen["bad argument"]


def test_without_a_token_the_endpoint_answers_loopback_names_only(bridge_env, processes):
    # Given bridge serve without a token (loopback only)
    url = serve(processes, bridge_env)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    # When a page from another site (DNS rebinding) posts to /mcp
    rebound = httpx.post(
        url + "/mcp", json=ping, headers={**accept, "Host": "evil.example"}, timeout=30
    )
    # Then it is refused
    assert rebound.status_code == 421

    # And the SDK's client on 127.0.0.1 gets the tools
    async def listed() -> set[str]:
        async with Client(url + "/mcp") as client:
            return {tool.name for tool in (await client.list_tools()).tools}

    assert "claim_task" in drive(listed, 90)
