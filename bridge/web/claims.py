"""The external-task routes: an agent claims a task, keeps its lease, completes or fails it.

Each route parses its body, calls one use case (``usecases.claim``, ``heartbeat``,
``complete``, ``fail``) and returns its result. Errors are the app's: an unknown task is
404, a stale or duplicate attempt 409 (``StaleAttempt``), a bad request 400.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from bridge import usecases
from bridge.app import App

router = APIRouter(tags=["external tasks"])

MAX_ATTEMPT = 2**31 - 1
"""The largest attempt a task's (32-bit) ``attempts`` column holds."""

Attempt = Annotated[
    int,
    Field(
        strict=True,
        ge=1,
        le=MAX_ATTEMPT,
        description="the attempt the claim gave (its fencing token)",
    ),
]


class ClaimBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: Annotated[
        str, Field(min_length=1, max_length=usecases.MAX_WORKER_NAME, description="who claims")
    ]
    kinds: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Field(description="claim only these external kinds (default: every external kind)"),
    ] = None


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: Attempt


class CompleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: Attempt
    output: Annotated[Any, Field(description="the result, any JSON value")] = None


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: Attempt
    error: Annotated[str, Field(min_length=1, description="what went wrong")]


def _app(request: Request) -> App:
    return request.app.state.bridge


@router.post(
    "/api/claims",
    summary="Claim the highest-priority ready external task (204: nothing to claim)",
    responses={204: {"description": "nothing to claim"}, 400: {}},
)
def claim(request: Request, body: ClaimBody) -> Any:
    claimed = usecases.claim(_app(request), worker=body.worker, kinds=body.kinds)
    if claimed is None:
        return Response(status_code=204)
    return claimed.to_dict()


@router.post(
    "/api/claims/{task_id:path}/heartbeat",
    summary="Extend a claim's lease by BRIDGE_CLAIM_TTL",
    responses={404: {}, 409: {"description": "not the task's live claim"}},
)
def heartbeat(request: Request, task_id: str, body: HeartbeatBody) -> dict[str, Any]:
    return {"lease_expires_at": usecases.heartbeat(_app(request), task_id, body.attempt)}


@router.post(
    "/api/tasks/{task_id:path}/complete",
    summary="Finish a claimed external task as done with its output",
    responses={400: {}, 404: {}, 409: {"description": "stale or duplicate attempt"}},
)
def complete(request: Request, task_id: str, body: CompleteBody) -> dict[str, Any]:
    return {"task": usecases.complete(_app(request), task_id, body.attempt, body.output)}


@router.post(
    "/api/tasks/{task_id:path}/fail",
    summary="Fail a claimed external task (retried if attempts remain)",
    responses={400: {}, 404: {}, 409: {"description": "stale or duplicate attempt"}},
)
def fail(request: Request, task_id: str, body: FailBody) -> dict[str, Any]:
    return {"task": usecases.fail(_app(request), task_id, body.attempt, body.error)}
