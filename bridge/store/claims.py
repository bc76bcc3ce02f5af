"""External tasks in the store: claiming one, renewing its lease, expiring lapsed ones.

A claim moves a ready task straight from ``available`` to ``working`` as a new attempt
with a fresh fencing token (in a job id that starts ``external-``). Its outcome is a
``Report`` applied by ``apply_reports`` like an RQ worker's, so the fencing rule is the
one rule for both. Lease times are stamped on the lease clock (``lease_clock``):
PostgreSQL's own on PostgreSQL, where the claimer and the dispatcher that expires the
claim may run on hosts whose clocks differ; the host's on SQLite.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, or_, select, text, update
from sqlmodel import Session

from bridge.external import CLAIM_JOB_PREFIX, claim_job_id
from bridge.messages import Report
from bridge.models import IN_FLIGHT_WHERE
from bridge.states import ReportKind
from bridge.store import schema
from bridge.store.engine import StoreError, now, stamp
from bridge.store.leases import lease_clock
from bridge.store.locks import lock_dependency_counts
from bridge.store.reports import Applied, apply_reports
from bridge.store.tables import TASKS, _event, _record

CLAIM_TRIES = 20
"""Candidates a claim tries before giving up: each miss is a task another claimer (or a
cancel) took between the look and the guarded UPDATE."""

NOT_A_CLAIM = or_(TASKS.c.job_id.is_(None), TASKS.c.job_id.not_like(CLAIM_JOB_PREFIX + "%"))
"""In-flight tasks that have an RQ job: reconciliation and slots look at these only."""

IS_A_CLAIM = TASKS.c.job_id.like(CLAIM_JOB_PREFIX + "%")

_CLAIMABLE_SQL = (
    "SELECT id, attempts FROM tasks{hint}"
    " WHERE status = 'available' AND pending_deps = 0"
    " AND (not_before IS NULL OR not_before <= :now) AND kind IN :kinds"
    " ORDER BY priority DESC, seq LIMIT 1"
)
"""The ready query of ``claim_ready``, for the claimed kinds (same partial index)."""

_CLAIMABLE = {
    dialect: text(_CLAIMABLE_SQL.format(hint=hint)).bindparams(bindparam("kinds", expanding=True))
    for dialect, hint in (("sqlite", " INDEXED BY ix_tasks_ready"), ("other", ""))
}


@dataclass(frozen=True)
class Claim:
    task_id: str
    attempt: int
    job_id: str
    lease_expires_at: str
    """UTC text, as the database stores times."""


def claim_clock(session: Session) -> datetime:
    """Now on the lease clock (PostgreSQL's own there, the host's on SQLite)."""
    return datetime.fromtimestamp(lease_clock(session=session), timezone.utc)


def _lease_until(session: Session, ttl: float) -> str:
    return stamp(claim_clock(session) + timedelta(seconds=ttl))


def claim_external(
    *, session: Session, kinds: Sequence[str], worker: str, ttl: float
) -> Claim | None:
    """Claim the highest-priority ready task of ``kinds`` for ``worker``, or None.

    Two claimers never get the same task: the UPDATE is guarded on the status and
    attempt the choice was made from, and a miss tries the next candidate.
    """
    conn = session.connection()
    query = _CLAIMABLE["sqlite" if session.get_bind().dialect.name == "sqlite" else "other"]
    at = now()
    token: int | None = None
    for _ in range(CLAIM_TRIES):
        row = conn.execute(query, {"now": at, "kinds": list(kinds)}).first()
        if row is None:
            return None
        if token is None:  # only once there is something to claim: polls write nothing
            token = schema.take_tokens(session=session, count=1)
        job = claim_job_id(schema.namespace(session=session), token)
        expires = _lease_until(session, ttl)
        attempt = row.attempts + 1
        changed = conn.execute(
            update(TASKS)
            .where(
                TASKS.c.id == row.id,
                TASKS.c.status == "available",
                TASKS.c.attempts == row.attempts,
                TASKS.c.pending_deps == 0,
            )
            .values(
                status="working",
                attempts=attempt,
                job_id=job,
                worker=worker,
                queued_at=at,
                started_at=at,
                updated_at=at,
                not_before=None,
                note=None,
                claim_expires_at=expires,
            )
        ).rowcount
        if changed == 1:
            detail = f"claimed by {worker} (lease until {expires[:19]} UTC)"
            _record(session, [_event(row.id, "available", "working", attempt, at, detail, worker)])
            return Claim(row.id, attempt, job, expires)
    raise StoreError("claim raced: other claimers kept taking the ready tasks; try again")


def renew_claim(*, session: Session, task_id: str, attempt: int, ttl: float) -> str | None:
    """Extend the live claim of ``attempt``: its new expiry, or None when it is not live."""
    expires = _lease_until(session, ttl)
    changed = (
        session.connection()
        .execute(
            update(TASKS)
            .where(
                TASKS.c.id == task_id,
                TASKS.c.attempts == attempt,
                TASKS.c.status == "working",
                IS_A_CLAIM,
            )
            .values(claim_expires_at=expires)
        )
        .rowcount
    )
    return expires if changed == 1 else None


def expire_claims(*, session: Session, max_output: int = 1024 * 1024) -> list[Applied]:
    """Fail every claim whose lease lapsed, as a lost worker's attempt is failed: retried
    after its backoff if attempts remain. Each is re-checked under its row lock first, so
    a heartbeat that got in meanwhile keeps its claim."""
    conn = session.connection()
    moment = stamp(claim_clock(session))
    lapsed = conn.execute(
        select(
            TASKS.c.id, TASKS.c.attempts, TASKS.c.job_id, TASKS.c.worker, TASKS.c.claim_expires_at
        ).where(text(IN_FLIGHT_WHERE), IS_A_CLAIM, TASKS.c.claim_expires_at < moment)
    ).all()
    if not lapsed:
        return []
    # The lock ``apply_reports`` takes first, taken before any row lock here: an agent's
    # completion racing this expiry then waits for it instead of deadlocking with it.
    lock_dependency_counts(session)
    reports: list[Report] = []
    for row in lapsed:
        held = conn.execute(
            update(TASKS)
            .where(
                TASKS.c.id == row.id,
                TASKS.c.job_id == row.job_id,
                TASKS.c.status == "working",
                TASKS.c.claim_expires_at < moment,
            )
            .values(claim_expires_at=None)
        ).rowcount
        if held == 1:
            reports.append(_lost(row))
    return apply_reports(session=session, reports=reports, max_output=max_output) if reports else []


def _lost(row: Any) -> Report:
    return Report(
        row.id,
        row.attempts,
        ReportKind.FAILED,
        row.job_id,
        row.worker,
        error=f"WorkerLost: the claim of attempt {row.attempts} by {row.worker or '?'} lapsed"
        f" at {row.claim_expires_at[:19]} UTC with no heartbeat",
    )
