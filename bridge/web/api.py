"""The JSON routes: each parses its input, calls one use case and returns its result."""

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from bridge import graphtext, usecases
from bridge.app import App
from bridge.graph import GraphError
from bridge.web.stream import EventHub

router = APIRouter()

TaskId = Annotated[str, "a task id (any characters; URL-encode it)"]


def bridge_app(request: Request) -> App:
    return request.app.state.bridge


class HttpError(Exception):
    """An error with its status, rendered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@router.get("/api/tasks", summary="A page of tasks in insertion order")
def list_tasks(
    request: Request,
    status: Annotated[str | None, Query(description="only tasks in this state")] = None,
    q: Annotated[str | None, Query(description="substring of the id or description")] = None,
    run: Annotated[str | None, Query(description="only tasks of this run")] = None,
    limit: Annotated[int | None, Query(ge=1, le=usecases.PAGE_MAX)] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    page = usecases.page_tasks(
        bridge_app(request), status=status, q=q, run=run, limit=limit, cursor=cursor
    )
    return {"tasks": page.tasks, "next_cursor": page.next_cursor}


@router.post(
    "/api/tasks",
    status_code=201,
    summary="Add one task or a graph (a list), all or nothing",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "object"},
                            {"type": "array", "items": {"type": "object"}},
                        ]
                    }
                }
            },
        }
    },
    responses={400: {}, 409: {}, 413: {}, 422: {}},
)
async def add_tasks(
    request: Request,
    run: Annotated[str | None, Query(description="scope the ids to this new run")] = None,
) -> JSONResponse:
    body = await request.body()
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise HttpError(400, "the body is not valid JSON") from None
    specs = usecases.specs_from_json(data)
    added = await run_in_threadpool(usecases.add, bridge_app(request), specs, run=run)
    return JSONResponse({"ids": added.added, "run": added.run}, status_code=201)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@router.get(
    "/api/tasks/{task_id:path}",
    summary="One task with its dependencies, dependents and why line",
    responses={404: {}},
)
def get_task(request: Request, task_id: TaskId) -> dict[str, Any]:
    return usecases.task_detail(bridge_app(request), task_id)


@router.post(
    "/api/tasks/{task_id:path}/retry",
    summary="A failed or cancelled task back to available",
    responses={404: {}, 409: {}},
)
def retry_task(request: Request, task_id: TaskId) -> dict[str, Any]:
    app = bridge_app(request)
    usecases.retry(app, task_id)
    return {"task": usecases.task_json(app, task_id)}


@router.post(
    "/api/tasks/{task_id:path}/cancel",
    summary="Cancel a task that has not finished",
    responses={404: {}, 409: {}},
)
def cancel_task(request: Request, task_id: TaskId) -> dict[str, Any]:
    app = bridge_app(request)
    usecases.cancel(app, task_id)
    return {"task": usecases.task_json(app, task_id)}


@router.get("/api/events", summary="The audit trail, in order", responses={404: {}})
def list_events(
    request: Request,
    task: Annotated[str | None, Query(description="only this task's events")] = None,
    after: Annotated[int | None, Query(ge=0, description="only events after this id")] = None,
    limit: Annotated[int | None, Query(ge=1, le=usecases.PAGE_MAX)] = None,
) -> dict[str, Any]:
    events, next_after = usecases.page_events(
        bridge_app(request), task_id=task, after=after, limit=limit
    )
    return {"events": events, "next_after": next_after}


@router.get("/api/slots", summary="The worker slots")
def list_slots(request: Request) -> dict[str, Any]:
    return {"slots": usecases.slot_dicts(bridge_app(request))}


@router.get("/api/workers", summary="The RQ workers on the queue", responses={503: {}})
def list_workers(request: Request) -> dict[str, Any]:
    return {"workers": usecases.worker_dicts(bridge_app(request))}


@router.get("/api/summary", summary="Counts, in flight, slots, queue depth, dispatcher")
def summary(request: Request) -> dict[str, Any]:
    return usecases.summary(bridge_app(request), live=request.app.state.counts).to_dict()


@router.get(
    "/api/graph",
    summary="A task's graph (or every task's) as JSON, Mermaid or DOT",
    responses={200: {"content": {"text/plain": {}}}, 404: {}},
)
def task_graph(
    request: Request,
    root: Annotated[str | None, Query(description="a task of the graph")] = None,
    format: Annotated[Literal["json", "mermaid", "dot"], Query()] = "json",
) -> Response:
    drawn = usecases.task_graph(bridge_app(request), root)
    if format == "mermaid":
        return PlainTextResponse(graphtext.mermaid(drawn.nodes, drawn.edges))
    if format == "dot":
        return PlainTextResponse(graphtext.dot(drawn.nodes, drawn.edges))
    return JSONResponse(drawn.to_dict())


@router.get(
    "/api/stream",
    summary="Server-sent events, one per state change; resumable with Last-Event-ID",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    after: int | None = None
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit():
            raise HttpError(400, "Last-Event-ID must be an event id")
        after = int(last_event_id.strip())
    hub: EventHub = request.app.state.hub

    async def body() -> Any:
        yield b": connected\n\n"
        async for chunk in hub.follow(after):
            yield chunk

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/healthz", summary="200 when the database and Redis answer, else 503")
def healthz(request: Request) -> JSONResponse:
    result = usecases.health(bridge_app(request))
    return JSONResponse(
        {"database": result.database, "redis": result.redis, "dispatcher": result.dispatcher},
        status_code=200 if result.ok else 503,
    )


__all__ = ["GraphError", "HttpError", "router"]
