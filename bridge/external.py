"""External tasks: tasks that agents (or any program) claim and finish, never sent to RQ.

Pure rules, no I/O: which kinds are external, what a claim's job id looks like, and the
one-line messages a refused claim, heartbeat or completion gives. The store uses the job
id prefix to tell a claim from an RQ attempt; the use cases put the calls in order.

A claim is an attempt like any other: it takes a fresh fencing token, carried in its job
id, and its outcome goes through the same fenced apply as an RQ worker's report. It does
not take a slot: slots bound how many jobs the dispatcher puts into Redis, and an agent
may hold a task for minutes; the lease (``BRIDGE_CLAIM_TTL``) bounds how long a claim
lives without a heartbeat instead.
"""

from collections.abc import Iterable, Sequence

from bridge.errors import BridgeError

EXTERNAL_KIND = "external"
"""Tasks of this kind are always external; ``BRIDGE_EXTERNAL_KINDS`` names more."""

CLAIM_JOB_PREFIX = "external-"
"""Every claim's job id starts so (an RQ attempt's starts ``bridge-``): reconciliation,
slots and cancel tell claims apart by it, whatever the settings of the process that looks."""


class StaleAttempt(BridgeError):
    """A heartbeat, completion or failure for an attempt that is not the task's live
    claim (an older attempt, a duplicate, or a task that moved on): nothing changed."""


class ClaimError(BridgeError, ValueError):
    """A claim request that cannot be served as asked (a kind that is not external)."""


def external_kinds(extra: Iterable[str]) -> tuple[str, ...]:
    """Every external kind: ``external`` plus the configured ones, sorted, no repeats."""
    return tuple(sorted({EXTERNAL_KIND, *extra}))


def claim_kinds(asked: Sequence[str] | None, configured: Sequence[str]) -> tuple[str, ...]:
    """The kinds a claim may take: those asked for (default: every external kind).

    A kind that is not external is refused: the dispatcher sends such tasks to RQ, and a
    claim would race it for them.
    """
    if not asked:
        return tuple(configured)
    wanted = tuple(dict.fromkeys(asked))
    foreign = [kind for kind in wanted if kind not in configured]
    if foreign:
        raise ClaimError(
            f"kind(s) {', '.join(repr(k) for k in foreign)} are not external (external kinds:"
            f" {', '.join(configured)}; add more with BRIDGE_EXTERNAL_KINDS)"
        )
    return wanted


def claim_job_id(namespace: str, token: int) -> str:
    """A claim's job id: the database's namespace and a fencing token unique over its life."""
    return f"{CLAIM_JOB_PREFIX}{namespace}-t{token}"


def is_claim(job_id: str | None) -> bool:
    return job_id is not None and job_id.startswith(CLAIM_JOB_PREFIX)


def stale_message(
    task_id: str, attempt: int, *, task_attempt: int, status: str, external: bool
) -> str:
    """Why an attempt's heartbeat or outcome was refused, in one line."""
    head = f"stale attempt {attempt} of task {task_id!r}"
    if not external:
        return f"{head}: it is not an external task (its attempts run on RQ workers)"
    if attempt != task_attempt:
        return f"{head}: the task is at attempt {task_attempt} ({status}); nothing changed"
    if status == "working":
        return f"{head}: nothing changed"
    return f"{head}: that attempt already ended (the task is {status}); nothing changed"
