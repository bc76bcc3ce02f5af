"""The MCP server over stdio (``bridge mcp``), driven by the SDK's own client, with a real
dispatcher, a real RQ worker, a private Redis and a SQLite file."""

import sys
from pathlib import Path

from helpers import bridge
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.stdio import stdio_client as stdio_transport
from mcp_flow import (
    assert_graph_finished,
    assert_lists_every_tool,
    drive,
    refused,
    run_graph_with_an_external_task,
)


def stdio_client(env: dict[str, str], log: Path) -> Client:
    """The SDK's client on a `bridge mcp` child; the child's stderr goes to ``log``."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "bridge", "mcp"], env=env)
    return Client(stdio_transport(params, errlog=log.open("a")))


def test_an_agent_over_stdio_runs_a_graph_with_an_external_task(tmp_path, bridge_env, processes):
    # Given a dispatcher and an RQ worker on a private Redis, and `bridge mcp` on stdio
    processes.start("dispatch", env=bridge_env)
    processes.start("worker", "--quiet", env=bridge_env)
    log = tmp_path / "mcp.log"

    async def scenario() -> dict:
        async with stdio_client(bridge_env, log) as client:
            # When the agent lists the tools, adds the graph, claims and completes its task
            await assert_lists_every_tool(client)
            return await run_graph_with_an_external_task(client, "weekly")

    seen = drive(scenario, 150)
    # Then the graph finished, and the stale and duplicate completions were refused
    assert_graph_finished(seen, "weekly")
    assert "Traceback" not in log.read_text(), log.read_text()


def test_bad_input_is_a_one_line_tool_error_the_same_as_the_cli(tmp_path, bridge_env):
    # Given `bridge mcp` on stdio (no dispatcher needed to refuse input)
    log = tmp_path / "mcp.log"
    graph = [{"id": "a", "dependencies": ["missing"]}]
    (tmp_path / "bad.json").write_text('[{"id": "a", "dependencies": ["missing"]}]')

    async def scenario() -> dict[str, str]:
        async with stdio_client(bridge_env, log) as client:
            return {
                "unknown dependency": await refused(client, "add_tasks", {"tasks": graph}),
                "unknown task": await refused(client, "get_task", {"id": "nope"}),
                "missing argument": await refused(client, "get_task", {}),
                "wrong type": await refused(
                    client, "heartbeat_task", {"id": "a", "attempt": "first"}
                ),
                "out of range": await refused(client, "wait_for_tasks", {"timeout": -1}),
                "unknown key": await refused(client, "add_tasks", {"tasks": {"id": "b", "x": 1}}),
                "bad status": await refused(client, "list_tasks", {"status": "sleeping"}),
            }

    # When the agent sends bad arguments and asks for what is not there
    errors = drive(scenario, 60)
    # Then each is a tool error of one line, without a traceback
    for what, text in errors.items():
        assert text and "\n" not in text and "Traceback" not in text, (what, text)
        assert "Error executing tool" not in text, (what, text)
    # And the use cases' messages are the CLI's, word for word
    cli = bridge("add", "--file", str(tmp_path / "bad.json"), env=bridge_env)
    assert (
        cli.stderr.strip()
        == f"error: {errors['unknown dependency']}".replace("error: ", "error: ", 1)
        or errors["unknown dependency"] in cli.stderr
    )
    assert errors["unknown dependency"] == "task 'a' depends on unknown task 'missing'"
    assert errors["unknown task"] == "no task 'nope'"
    assert errors["missing argument"] == "bad argument(s): id: Field required"
    assert errors["wrong type"].startswith("bad argument(s): attempt: ")
    assert errors["out of range"].startswith("bad argument(s): timeout: ")
    assert errors["unknown key"] == "task: unknown key(s) x"
    assert errors["bad status"].startswith("unknown status 'sleeping'")
