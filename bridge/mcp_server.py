"""The MCP server: bridge's use cases as tools for AI agents (``bridge mcp``, ``/mcp``).

Each tool parses its arguments (JSON schemas come from the type hints) and calls one
use case in ``bridge.usecases``; no rule lives here. A ``BridgeError`` comes back as a
tool error whose text is the same one line the CLI prints after ``error:``; a bad
argument too, in one line; a bug shows only ``Error executing tool NAME`` to the client
(its traceback stays in the server's log). Named ``mcp_server`` so that it does not
shadow the ``mcp`` SDK.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from bridge import usecases
from bridge.app import App
from bridge.errors import BridgeError
from bridge.runner import EXIT_TIMEOUT

INSTRUCTIONS = """\
bridge is a durable task coordinator: a graph of tasks kept in a database, run by
workers. Add tasks (add_tasks), watch them (list_tasks, get_task, task_events,
graph_summary, wait_for_tasks), retry or cancel them. Tasks of kind 'external' are run by
you: claim_task gives you one with its attempt number; keep it with heartbeat_task and
finish it with complete_task or fail_task, passing that attempt back."""

WAIT_MAX = 3600.0
"""The longest one ``wait_for_tasks`` call may block, in seconds."""
WAIT_SLICE = 2.0
"""Seconds of each blocking look while ``wait_for_tasks`` waits."""

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

_servers: weakref.WeakKeyDictionary[App, MCPServer] = weakref.WeakKeyDictionary()
"""The server built for an ``App``: ``http_app`` and ``lifespan`` must share one."""


class BridgeMCP(MCPServer):
    """MCPServer whose tool errors are one line: the use case's own message."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            message = _one_line(exc)
            if message is None:
                raise  # a bug: the SDK shows a generic line and logs the traceback
            raise ToolError(message) from None


def _one_line(exc: ToolError) -> str | None:
    """The line the client sees for a failed call, or None for a crash."""
    cause = exc.__cause__
    if isinstance(cause, BridgeError):
        return str(cause).replace("\n", " ")
    if isinstance(cause, ValidationError):
        return _validation_line(cause)
    if isinstance(cause, ToolError):
        return str(cause).replace("\n", " ")
    if isinstance(exc, UnexpectedToolError):
        return None
    return str(exc).replace("\n", " ")


def _validation_line(error: ValidationError) -> str:
    """Pydantic's several lines as one: ``bad argument(s): field: reason; ...``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        parts.append(f"{where}: {item['msg']}")
    return ("bad argument(s): " + "; ".join(parts)).replace("\n", " ")


def build_server(app: App) -> MCPServer:
    """The MCP server with every bridge tool, each calling a use case on ``app``."""
    server = BridgeMCP("bridge", instructions=INSTRUCTIONS)

    # ---------------------------------------------------------------- tasks

    @server.tool(annotations=WRITES)
    def add_tasks(
        tasks: Annotated[
            list[dict[str, Any]] | dict[str, Any],
            Field(
                description="One task object or a list of them (a graph), with the keys of a"
                " graph file: id (required), description, kind, payload, dependencies (ids),"
                " priority, max_attempts, timeout, queue, pool, not_before, delay."
            ),
        ],
        run: Annotated[
            str | None,
            Field(description="Name a run: ids become 'RUN/id'. Omitted: ids are kept."),
        ] = None,
    ) -> dict[str, Any]:
        """Add one task or a whole graph, all or nothing (the same checks as
        `bridge add --file`). Returns the stored ids and the run they belong to."""
        specs = usecases.specs_from_json(tasks)
        added = usecases.add(app, specs, run=run)
        return {"ids": added.added, "run": added.run, "warnings": added.warnings}

    @server.tool(annotations=READ_ONLY)
    def list_tasks(
        status: Annotated[
            str | None,
            Field(
                description="Only tasks in this state: available, queued, working, done,"
                " failed or cancelled."
            ),
        ] = None,
        run: Annotated[str | None, Field(description="Only the tasks of this run.")] = None,
        limit: Annotated[
            int | None, Field(description="Tasks per page (default 100, at most 1000).")
        ] = None,
        cursor: Annotated[
            str | None, Field(description="next_cursor of the previous page.")
        ] = None,
    ) -> dict[str, Any]:
        """One page of tasks in the order they were added; pass next_cursor back as
        cursor for the next page (null: this was the last)."""
        page = usecases.page_tasks(app, status=status, run=run, limit=limit, cursor=cursor)
        return {"tasks": page.tasks, "next_cursor": page.next_cursor}

    @server.tool(annotations=READ_ONLY)
    def get_task(id: Annotated[str, Field(description="The task's stored id.")]) -> dict[str, Any]:
        """Every field of a task, why it is in its state, its dependencies and dependents
        with their states, and the traceback of its latest failure."""
        return usecases.task_detail(app, id)

    @server.tool(annotations=READ_ONLY)
    def task_events(
        id: Annotated[str, Field(description="The task's stored id.")],
        after: Annotated[
            int | None, Field(description="Only events after this event id (next_after).")
        ] = None,
    ) -> dict[str, Any]:
        """A task's history: each change of state, its attempt, worker and detail."""
        events, next_after = usecases.page_events(app, task_id=id, after=after)
        return {"events": events, "next_after": next_after}

    @server.tool(annotations=WRITES)
    def retry_task(
        id: Annotated[str, Field(description="The task's stored id.")],
    ) -> dict[str, Any]:
        """Put a failed or cancelled task back to available (its history is kept); the
        graph waiting on it resumes."""
        result = usecases.retry(app, id)
        return {"task": usecases.task_json(app, id), "warnings": result.warnings}

    @server.tool(annotations=WRITES)
    def cancel_task(
        id: Annotated[str, Field(description="The task's stored id.")],
    ) -> dict[str, Any]:
        """Cancel a task that has not finished; a running one is asked to stop and its
        result, if any, is ignored."""
        result = usecases.cancel(app, id)
        return {
            "task": usecases.task_json(app, id),
            "job": result.job,
            "warnings": result.warnings,
        }

    @server.tool(annotations=READ_ONLY)
    async def wait_for_tasks(
        timeout: Annotated[
            float,
            Field(ge=0, le=WAIT_MAX, description="Seconds to wait at most (up to 3600)."),
        ],
        ids: Annotated[
            list[str] | None, Field(description="Wait for these tasks (stored ids).")
        ] = None,
        run: Annotated[str | None, Field(description="Wait for every task of this run.")] = None,
    ) -> dict[str, Any]:
        """Block until the tasks (ids, a run's, or else every task) are all done, or
        nothing more of them can run, or the timeout passes. Returns outcome ('done',
        'stuck' or 'timeout'), each task's state, and what stops a stuck graph."""
        # In slices, each in a worker thread: a long wait holds no thread for long, and
        # a client that gives up (cancels the request) stops it within a slice.
        deadline = anyio.current_time() + timeout
        while True:
            left = max(0.0, deadline - anyio.current_time())
            waited = await anyio.to_thread.run_sync(
                partial(
                    usecases.wait,
                    app,
                    task_ids=ids or None,
                    run=run,
                    timeout=min(left, WAIT_SLICE),
                )
            )
            if waited.code != EXIT_TIMEOUT or left <= WAIT_SLICE:
                break
        states = await anyio.to_thread.run_sync(usecases.waited_states, app, waited)
        return states.to_dict()

    @server.tool(annotations=READ_ONLY)
    def graph_summary(
        run: Annotated[
            str | None, Field(description="One run's counts; omitted: the whole database.")
        ] = None,
    ) -> dict[str, Any]:
        """Counts of tasks by state, with a run's state (running, done, failed,
        cancelled) or, for the whole database, what is in flight and the dispatcher."""
        if run is not None:
            return usecases.get_run(app, run).to_dict()
        return usecases.summary(app).to_dict()

    # ---------------------------------------------------------------- external tasks

    @server.tool(annotations=WRITES)
    def claim_task(
        worker: Annotated[str, Field(description="Your name, recorded as the task's worker.")],
        kinds: Annotated[
            list[str] | None,
            Field(description="Kinds you can do; omitted: any external kind."),
        ] = None,
    ) -> dict[str, Any]:
        """Take the most urgent ready external task. Returns its id, the task, its
        attempt (pass id and attempt to heartbeat_task, complete_task, fail_task) and
        when the lease lapses unless kept alive; task is null when nothing is ready."""
        claimed = usecases.claim(app, worker=worker, kinds=kinds)
        if claimed is None:
            return {"id": None, "task": None, "attempt": None, "lease_expires_at": None}
        return {
            "id": claimed.task["id"],
            "task": claimed.task,
            "attempt": claimed.attempt,
            "lease_expires_at": claimed.lease_expires_at,
        }

    @server.tool(annotations=WRITES)
    def heartbeat_task(
        id: Annotated[str, Field(description="The claimed task's id.")],
        attempt: Annotated[int, Field(description="The attempt claim_task returned.")],
    ) -> dict[str, Any]:
        """Keep a claimed task's lease alive; refused if the attempt is no longer current."""
        return {"lease_expires_at": usecases.heartbeat(app, id, attempt)}

    @server.tool(annotations=WRITES)
    def complete_task(
        id: Annotated[str, Field(description="The claimed task's id.")],
        attempt: Annotated[int, Field(description="The attempt claim_task returned.")],
        output: Annotated[Any, Field(description="The result: any JSON value.")] = None,
    ) -> dict[str, Any]:
        """Finish a claimed task as done with its output; a stale or repeated attempt is
        refused and changes nothing."""
        return {"task": usecases.complete(app, id, attempt, output)}

    @server.tool(annotations=WRITES)
    def fail_task(
        id: Annotated[str, Field(description="The claimed task's id.")],
        attempt: Annotated[int, Field(description="The attempt claim_task returned.")],
        error: Annotated[str, Field(description="What went wrong, for people to read.")],
    ) -> dict[str, Any]:
        """Finish a claimed task as failed (retried if attempts remain); a stale or
        repeated attempt is refused and changes nothing."""
        return {"task": usecases.fail(app, id, attempt, error)}

    _servers[app] = server
    return server


def server_for(app: App) -> MCPServer:
    """The one server of ``app`` (built on first use)."""
    server = _servers.get(app)
    return server if server is not None else build_server(app)


def http_app(app: App) -> Any:
    """The streamable HTTP endpoint, an ASGI app that answers at any path it is mounted
    on (``bridge serve`` puts it at ``/mcp``; the web app's auth guards it). Its
    session manager runs inside ``lifespan(app)``."""
    server = server_for(app)
    starlette = server.streamable_http_app(
        streamable_http_path="/",
        transport_security=_transport_security(app),
    )
    return starlette.routes[0].app


def _transport_security(app: App) -> TransportSecuritySettings:
    """Without a token, ``serve`` is loopback only: refuse a Host or Origin that is not
    (DNS rebinding). With one, the token decides, on whatever host serves it."""
    if app.settings.api_token:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    """Runs the HTTP endpoint's session manager while the web app is up."""
    server = server_for(app)
    try:
        manager = server.session_manager
    except RuntimeError:  # http_app was not called: nothing to run
        yield
        return
    async with manager.run():
        yield


def run_stdio(app: App) -> None:
    """``bridge mcp``: serve the tools on stdin/stdout until the client closes them.

    The database is opened first: an unusable one is one ``error:`` line at start, not
    a failure of every call; and tools run in threads, which must not race to open it.
    """
    app.engine  # noqa: B018
    server_for(app).run("stdio")


__all__ = ["build_server", "http_app", "lifespan", "run_stdio", "server_for"]
