"""Slots, claiming ready tasks, and re-dispatching lost ones."""

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause, bindparam, delete, insert, select, text, update
from sqlmodel import Session

from bridge.messages import Dispatch, job_id_for
from bridge.models import IN_FLIGHT_WHERE
from bridge.recovery import Flight
from bridge.reporting import inputs_problem
from bridge.settings import DEFAULT_MAX_INPUTS
from bridge.states import (
    IN_FLIGHT,
    TaskStatus,
)
from bridge.store import pools, schema
from bridge.store.claims import NOT_A_CLAIM
from bridge.store.engine import StoreError, now
from bridge.store.tables import (
    SLOTS,
    TASKS,
    _chunks,
    _driver_marks,
    _event,
    _record,
    _release_slots,
)


def reset_slots(*, session: Session, slots: int) -> list[str]:
    """Free every slot, then give one to each task really in flight (oldest first).

    Called when a dispatcher starts: assignments recorded on the tasks are kept,
    the slot table is rebuilt from them. Returns the in-flight task ids. Claimed
    external tasks hold no slot (they have no RQ job) and are left out.
    """
    conn = session.connection()
    at = now()
    in_flight = [
        row.id
        for row in conn.execute(
            select(TASKS.c.id)
            .where(text(IN_FLIGHT_WHERE), NOT_A_CLAIM)
            .order_by(TASKS.c.queued_at, TASKS.c.seq)
        )
    ]
    wanted = max(slots, len(in_flight))
    conn.execute(delete(SLOTS).where(SLOTS.c.slot > wanted))
    existing = {row.slot for row in conn.execute(select(SLOTS.c.slot))}
    missing = [
        {"slot": n, "active": 0, "updated_at": at}
        for n in range(1, wanted + 1)
        if n not in existing
    ]
    if missing:
        conn.execute(insert(SLOTS), missing)
    conn.execute(update(SLOTS).values(active=0, task_id=None, worker_id=None, updated_at=at))
    workers = {
        row.id: row.worker
        for chunk in _chunks(in_flight)
        for row in conn.execute(select(TASKS.c.id, TASKS.c.worker).where(TASKS.c.id.in_(chunk)))
    }
    if in_flight:
        conn.execute(
            update(SLOTS)
            .where(SLOTS.c.slot == bindparam("b_slot"))
            .values(active=1, task_id=bindparam("b_task"), worker_id=bindparam("b_worker")),
            [
                {"b_slot": n, "b_task": task_id, "b_worker": workers.get(task_id)}
                for n, task_id in enumerate(in_flight, start=1)
            ],
        )
    return in_flight


_READY_SQL = (
    "SELECT id, kind, payload, timeout, attempts, queue, pool, local_id, run, max_attempts"
    " FROM tasks{hint}"
    " WHERE status = 'available' AND pending_deps = 0"
    " AND (not_before IS NULL OR not_before <= :now){extra}"
    " ORDER BY priority DESC, seq LIMIT :limit"
)
"""Literal status and count so the partial index ``ix_tasks_ready`` applies. SQLite
needs the hint: without ANALYZE statistics its planner may scan every available task,
blocked ones included, and sort them on every tick. PostgreSQL takes the partial index
by itself (no index on ``status`` alone competes with it). ``{extra}`` holds further
conditions (`` AND ...``), such as which pools may take a task."""

NO_POOL = "pool IS NULL"
"""With no pool open (none exists, or all are full), only tasks naming no pool are ready."""
OPEN_POOLS = "(pool IS NULL OR pool IN :open_pools)"


@functools.lru_cache(maxsize=64)
def _ready_statement(
    dialect: str, conditions: tuple[str, ...] = (), expanding: tuple[str, ...] = ()
) -> TextClause:
    """The ready query with ``conditions`` added to its WHERE; ``expanding`` names the
    parameters that take a list (``IN :name``)."""
    hint = " INDEXED BY ix_tasks_ready" if dialect == "sqlite" else ""
    extra = "".join(f" AND {condition}" for condition in conditions)
    statement = text(_READY_SQL.format(hint=hint, extra=extra))
    if expanding:
        statement = statement.bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return statement


_READY = {
    "sqlite": _ready_statement("sqlite", (NO_POOL,)),
    "other": _ready_statement("other", (NO_POOL,)),
}
"""The ready query when no pool is open (the common case, and the one plans are checked on)."""

EXCLUDE_KINDS = "kind NOT IN :exclude"
"""External kinds: agents claim those tasks (``store.claim_external``), RQ never runs them."""


def _ready_query(
    session: Session, conditions: tuple[str, ...] = (), expanding: tuple[str, ...] = ()
) -> TextClause:
    dialect = "sqlite" if session.get_bind().dialect.name == "sqlite" else "other"
    return _ready_statement(dialect, conditions, expanding)


def claim_ready(
    *,
    session: Session,
    slots: int,
    max_output: int = 1024 * 1024,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    exclude_kinds: Sequence[str] = (),
    namespace: str | None = None,
) -> list[Dispatch]:
    """Move ready tasks into free slots as ``queued``: priority first, then age.

    At most ``slots`` tasks are ever in flight: after ``--slots`` is lowered, tasks
    already in flight above the new limit finish first and nothing new is claimed
    until the count is below it. A task naming a pool is claimed only while its pool
    has a free slot (see ``bridge.store.pools``); a full pool never holds back the
    other ready tasks. Work is proportional to the tasks claimed (partial index),
    never to history. Tasks of ``exclude_kinds`` (external kinds) are never claimed
    here: agents claim them. ``namespace`` is the database's Redis namespace when the
    caller holds it already (the dispatcher does: one read less per tick).
    """
    conn = session.connection()
    rows = conn.execute(_SLOTS).all()
    busy = sum(1 for r in rows if r.active)
    free = [r.slot for r in rows if not r.active][: max(0, slots - busy)]
    if not free:
        return []
    at = now()
    if exclude_kinds:
        ready = _ready_rows(
            session, at, len(free), (EXCLUDE_KINDS,), {"exclude": list(exclude_kinds)}, ("exclude",)
        )
    else:
        ready = _ready_rows(session, at, len(free))
    if not ready:
        return []
    dispatches = _new_attempts(session, ready, max_output, max_inputs, namespace=namespace)
    if not dispatches:  # every ready task failed at dispatch (inputs too large)
        return []
    _mark_queued(session, dispatches, ["available"] * len(dispatches), at, "dispatched", None)
    conn.execute(
        _TAKE_SLOT,
        [
            {"b_slot": slot, "b_task": d.task_id, "b_at": at}
            for slot, d in zip(free, dispatches, strict=False)
        ],
    )
    return dispatches


_SLOTS = select(SLOTS.c.slot, SLOTS.c.active).order_by(SLOTS.c.slot)
_TAKE_SLOT = (
    update(SLOTS)
    .where(SLOTS.c.slot == bindparam("b_slot"))
    .values(active=1, task_id=bindparam("b_task"), worker_id=None, updated_at=bindparam("b_at"))
)


def _ready_rows(
    session: Session,
    at: str,
    limit: int,
    conditions: Sequence[str] = (),
    params: dict[str, Any] | None = None,
    expanding: Sequence[str] = (),
) -> list[Any]:
    """Up to ``limit`` ready tasks in claim order, within their pools' free slots.

    Full pools are left out in SQL. When a pool fills up within this batch, its further
    rows are passed over and the query runs again without it, so the rest of the ready
    tasks still fill the free slots; each round closes a pool, so rounds are few.
    ``conditions`` (with ``params``; ``expanding`` names list parameters) narrow what is
    ready further."""
    free = pools.capacity(session=session)
    taken: list[Any] = []
    seen: set[str] = set()
    while True:
        open_pools = sorted(name for name, n in free.items() if n > 0)
        pool_condition = OPEN_POOLS if open_pools else NO_POOL
        wanted = limit - len(taken) + len(seen)
        query = _ready_query(
            session,
            (*conditions, pool_condition),
            (*expanding, "open_pools") if open_pools else tuple(expanding),
        )
        values = {**(params or {}), "now": at, "limit": wanted}
        if open_pools:
            values["open_pools"] = open_pools
        rows = session.connection().execute(query, values).all()
        fresh = [r for r in rows if r.id not in seen]
        more, passed = pools.within_pools(fresh, free, limit - len(taken))
        taken += more
        seen.update(r.id for r in more)
        if len(taken) >= limit or not passed or len(rows) < wanted:
            return taken


def _new_attempts(
    session: Session,
    rows: Sequence[Any],
    max_output: int,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    sources: Sequence[str] | None = None,
    namespace: str | None = None,
) -> list[Dispatch]:
    """One new attempt per row, each with a fresh fencing token in its job id and its
    dependencies' outputs as inputs. A row whose inputs exceed ``max_inputs`` gets no
    attempt: it fails here, in this transaction, saying which dependency is largest."""
    inputs, too_large = _gather_inputs(session, {r.id: r.run for r in rows}, max_inputs)
    if too_large:
        states = sources or ["available"] * len(rows)
        _fail_unsendable(
            session,
            [(r, source) for r, source in zip(rows, states, strict=True) if r.id in too_large],
            too_large,
        )
        rows = [r for r in rows if r.id not in too_large]
    if not rows:
        return []
    namespace = namespace or schema.namespace(session=session)
    first = schema.take_tokens(session=session, count=len(rows))
    return [
        Dispatch(
            task_id=r.id,
            attempt=r.attempts + 1,
            job_id=job_id_for(r.id, namespace, first + n),
            kind=r.kind,
            payload=r.payload,
            timeout=r.timeout,
            queue=r.queue,
            namespace=namespace,
            max_output=max_output,
            inputs=inputs.get(r.id),
            run=r.run,
            local_id=r.local_id,
            max_attempts=r.max_attempts,
        )
        for n, r in enumerate(rows)
    ]


_INPUTS = (
    "SELECT e.task_id AS task_id, d.id AS id, d.local_id AS local_id, d.run AS run,"
    " d.output AS output"
    " FROM task_edges e JOIN tasks d ON d.id = e.depends_on WHERE e.task_id IN ({ids})"
)
"""Every dependency's output of a claim batch, one query per chunk of ids (the edge
table's primary key starts with ``task_id``): a 1,000-input fan-in costs one indexed
range read, not a query per dependency."""


def _gather_inputs(
    session: Session, runs: dict[str, str | None], limit: int
) -> tuple[dict[str, dict[str, str | None]], dict[str, str]]:
    """``(inputs by task, why by task for those whose inputs are too large)``, for the
    tasks ``runs`` names (task id -> its run).

    An input is named as the dependent's graph wrote it: a dependency of the same run
    by its id in the graph (``local_id``), one of another run by its stored id."""
    conn = session.connection()
    found: dict[str, list[tuple[str, str | None]]] = {}
    for chunk in _chunks(list(runs)):
        # Straight to the driver: a fan-in's thousand rows through SQLAlchemy's result
        # machinery cost more than the read itself.
        query = _INPUTS.format(ids=_driver_marks(conn, len(chunk)))
        for task_id, dep_id, local_id, run, output in conn.exec_driver_sql(query, tuple(chunk)):
            same_run = local_id is not None and run == runs[task_id]
            found.setdefault(task_id, []).append((local_id if same_run else dep_id, output))
    inputs: dict[str, dict[str, Any]] = {}
    too_large: dict[str, str] = {}
    for task_id, outputs in found.items():
        problem = inputs_problem(
            [(name, len(output.encode()) if output else 0) for name, output in outputs], limit
        )
        if problem is not None:
            too_large[task_id] = problem
            continue
        inputs[task_id] = dict(outputs)
    return inputs, too_large


_GUARDED = update(TASKS).where(
    TASKS.c.id == bindparam("b_id"),
    TASKS.c.attempts == bindparam("b_prev"),
    TASKS.c.status == bindparam("b_src"),
)
"""An update of one task, only if it still has the attempt and status it was read with."""


def _fail_unsendable(
    session: Session, rows: Sequence[tuple[Any, str]], why: dict[str, str]
) -> None:
    """Fail tasks that cannot be sent, at dispatch: no attempt, no job; a slot held by
    an in-flight one (re-dispatch) is freed. ``bridge retry`` reopens them."""
    at = now()
    changed = (
        session.connection()
        .execute(
            _GUARDED.values(
                status="failed",
                error=bindparam("b_error"),
                completed_at=at,
                updated_at=at,
                not_before=None,
                progress=None,
                progress_message=None,
                note="failed at dispatch: its inputs cannot travel with its job",
            ),
            [
                {"b_id": r.id, "b_prev": r.attempts, "b_src": source, "b_error": why[r.id]}
                for r, source in rows
            ],
        )
        .rowcount
    )
    if changed != len(rows):
        raise StoreError(f"dispatch raced: {changed} of {len(rows)} tasks changed")
    _release_slots(session, [r.id for r, _ in rows], at)
    _record(
        session,
        [
            _event(r.id, source, "failed", r.attempts, at, f"failed at dispatch: {why[r.id]}")
            for r, source in rows
        ],
    )


_MARK_QUEUED = _GUARDED.values(
    status="queued",
    attempts=bindparam("b_attempt"),
    job_id=bindparam("b_job"),
    queued_at=bindparam("b_at"),
    updated_at=bindparam("b_at"),
    not_before=None,
    worker=None,
    started_at=None,
    note=bindparam("b_note"),
    progress=None,
    progress_message=None,
)


def _mark_queued(
    session: Session,
    dispatches: Sequence[Dispatch],
    sources: Sequence[str],
    at: str,
    detail: str,
    note: str | None,
) -> None:
    """Commit ``queued`` for a new attempt, each task guarded on its status and attempt."""
    if not dispatches:
        return
    params = [
        {
            "b_id": d.task_id,
            "b_prev": d.attempt - 1,
            "b_src": source,
            "b_attempt": d.attempt,
            "b_job": d.job_id,
            "b_at": at,
            "b_note": note,
        }
        for d, source in zip(dispatches, sources, strict=True)
    ]
    changed = session.connection().execute(_MARK_QUEUED, params).rowcount
    if changed != len(dispatches):
        raise StoreError(f"dispatch raced: {changed} of {len(dispatches)} tasks changed")
    _record(
        session,
        [
            _event(d.task_id, source, "queued", d.attempt, at, detail)
            for d, source in zip(dispatches, sources, strict=True)
        ],
    )


def in_flight(*, session: Session) -> list[Flight]:
    """Every task in flight on an RQ job, for reconciliation (claims have none to judge:
    their lease decides, ``expire_claims``)."""
    rows = session.connection().execute(
        select(
            TASKS.c.id,
            TASKS.c.status,
            TASKS.c.attempts,
            TASKS.c.job_id,
            TASKS.c.queued_at,
            TASKS.c.started_at,
            TASKS.c.timeout,
            TASKS.c.worker,
            TASKS.c.queue,
        ).where(text(IN_FLIGHT_WHERE), NOT_A_CLAIM)
    )
    return [
        Flight(
            r.id,
            TaskStatus(r.status),
            r.attempts,
            r.job_id,
            r.queued_at,
            r.started_at,
            r.timeout,
            r.worker,
            r.queue,
        )
        for r in rows
    ]


def redispatch(
    *,
    session: Session,
    tasks: Sequence[Flight],
    reason: str,
    max_output: int = 1024 * 1024,
    max_inputs: int = DEFAULT_MAX_INPUTS,
) -> list[Dispatch]:
    """A new attempt for in-flight tasks whose job was lost; the old attempt is fenced off
    (its job id, and so its token, is no longer the task's)."""
    current = {
        r.id: r
        for chunk in _chunks([t.task_id for t in tasks])
        for r in session.connection().execute(
            select(
                TASKS.c.id,
                TASKS.c.kind,
                TASKS.c.payload,
                TASKS.c.timeout,
                TASKS.c.attempts,
                TASKS.c.status,
                TASKS.c.job_id,
                TASKS.c.queue,
                TASKS.c.local_id,
                TASKS.c.run,
                TASKS.c.max_attempts,
            ).where(TASKS.c.id.in_(chunk))
        )
    }
    rows = []
    for t in tasks:
        row = current.get(t.task_id)
        if row is None or row.job_id != t.job_id or TaskStatus(row.status) not in IN_FLIGHT:
            continue  # resolved meanwhile
        rows.append(row)
    dispatches = (
        _new_attempts(session, rows, max_output, max_inputs, [r.status for r in rows])
        if rows
        else []
    )
    if dispatches:
        source = {r.id: r.status for r in rows}
        sources = [source[d.task_id] for d in dispatches]
        _mark_queued(session, dispatches, sources, now(), reason, reason)
    return dispatches


def next_wakeup(*, session: Session) -> str | None:
    """The earliest end of a retry backoff or of a delay (``not_before``, ``delay``), so
    the dispatcher wakes up for it."""
    hint = " INDEXED BY ix_tasks_backoff" if session.get_bind().dialect.name == "sqlite" else ""
    return session.execute(
        text(
            f"SELECT min(not_before) FROM tasks{hint}"
            " WHERE status = 'available' AND not_before IS NOT NULL"
        )
    ).scalar()
