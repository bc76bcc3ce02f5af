"""Pools: named bounds on how many tasks of a kind of resource are in flight at once.

A task naming a pool is claimed only while fewer than the pool's ``slots`` tasks of it
are queued or working, on top of the global slots (``worker_slots``). A task naming a
pool that does not exist waits until ``bridge pool set`` creates it. The dispatcher's
claim asks ``capacity`` on every claim, so with no pool at all that costs one read of
an empty table.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlmodel import Session

from bridge.models import IN_FLIGHT_WHERE
from bridge.store.engine import now
from bridge.store.errors import StoreError
from bridge.store.tables import POOLS, TASKS


class PoolError(StoreError):
    """A pool request the state of the database refuses (e.g. deleting a busy pool)."""


@dataclass(frozen=True)
class PoolInfo:
    name: str
    slots: int
    in_flight: int
    """Tasks of the pool queued or working."""
    waiting: int
    """Tasks of the pool ready to run (no unfinished dependency), not yet dispatched."""


_IN_FLIGHT_BY_POOL = text(
    f"SELECT pool, count(*) AS n FROM tasks WHERE {IN_FLIGHT_WHERE} AND pool IS NOT NULL"
    " GROUP BY pool"
)
"""Literal statuses so ``ix_tasks_in_flight`` applies: at most the global slots' rows."""


_POOL_SLOTS = select(POOLS.c.name, POOLS.c.slots)


def capacity(*, session: Session) -> dict[str, int]:
    """Each pool's free slots now (0 when full or over, after its slots were lowered).

    Empty when no pool exists: the claim then only excludes tasks naming a pool."""
    conn = session.connection()
    slots = {row.name: row.slots for row in conn.execute(_POOL_SLOTS)}
    if not slots:
        return {}
    busy = {row.pool: row.n for row in conn.execute(_IN_FLIGHT_BY_POOL)}
    return {name: max(0, n - busy.get(name, 0)) for name, n in slots.items()}


def within_pools(rows: Iterable[Any], free: dict[str, int], limit: int) -> tuple[list[Any], bool]:
    """Take ``rows`` in their order (priority, then age) up to ``limit``, a pool's rows
    only while it has a free slot; ``free`` is updated. Returns what was taken and
    whether a row was passed over because its pool filled up meanwhile."""
    taken: list[Any] = []
    passed = False
    for row in rows:
        if len(taken) >= limit:
            break
        if row.pool is not None:
            if free.get(row.pool, 0) <= 0:
                passed = True
                continue
            free[row.pool] -= 1
        taken.append(row)
    return taken, passed


def set_pool(*, session: Session, name: str, slots: int) -> bool:
    """Create the pool or change its slots; returns whether it was created."""
    conn = session.connection()
    at = now()
    changed = conn.execute(
        update(POOLS).where(POOLS.c.name == name).values(slots=slots, updated_at=at)
    ).rowcount
    if changed:
        return False
    conn.execute(insert(POOLS).values(name=name, slots=slots, updated_at=at))
    return True


def delete_pool(*, session: Session, name: str) -> int:
    """Delete a pool none of whose tasks is in flight; returns how many of its tasks wait
    (they keep waiting, as for any pool that does not exist, until it is set again)."""
    info = pool_info(session=session, name=name)
    if info is None:
        raise PoolError(f"no pool named {name!r}")
    if info.in_flight:
        raise PoolError(
            f"pool {name!r} has {info.in_flight} task(s) in flight;"
            " delete it once they finish (or bridge pool set it to 0 to stop new ones)"
        )
    session.connection().execute(delete(POOLS).where(POOLS.c.name == name))
    return _waiting(session, [name]).get(name, 0)


def list_pools(*, session: Session) -> list[PoolInfo]:
    conn = session.connection()
    rows = conn.execute(select(POOLS.c.name, POOLS.c.slots).order_by(POOLS.c.name)).all()
    if not rows:
        return []
    busy = {row.pool: row.n for row in conn.execute(_IN_FLIGHT_BY_POOL)}
    waiting = _waiting(session, [r.name for r in rows])
    return [PoolInfo(r.name, r.slots, busy.get(r.name, 0), waiting.get(r.name, 0)) for r in rows]


def missing_pools(*, session: Session) -> dict[str, int]:
    """Pools that ready tasks name but that do not exist, with how many tasks wait on each."""
    rows = session.connection().execute(
        select(TASKS.c.pool, func.count())
        .where(TASKS.c.status == "available", TASKS.c.pending_deps == 0)
        .where(TASKS.c.pool.is_not(None), TASKS.c.pool.not_in(select(POOLS.c.name)))
        .group_by(TASKS.c.pool)
        .order_by(TASKS.c.pool)
    )
    return {pool: int(n) for pool, n in rows}


def pool_info(*, session: Session, name: str) -> PoolInfo | None:
    """One pool with its counts, or None when no pool has that name."""
    row = session.connection().execute(select(POOLS.c.slots).where(POOLS.c.name == name)).first()
    if row is None:
        return None
    in_flight = (
        session.connection()
        .execute(
            text(f"SELECT count(*) FROM tasks WHERE {IN_FLIGHT_WHERE} AND pool = :name"),
            {"name": name},
        )
        .scalar()
    )
    return PoolInfo(name, row.slots, int(in_flight or 0), _waiting(session, [name]).get(name, 0))


def _waiting(session: Session, names: Sequence[str]) -> dict[str, int]:
    rows = session.connection().execute(
        select(TASKS.c.pool, func.count())
        .where(TASKS.c.status == "available", TASKS.c.pending_deps == 0)
        .where(TASKS.c.pool.in_(list(names)))
        .group_by(TASKS.c.pool)
    )
    return {pool: int(n) for pool, n in rows}
