"""Named leases: one dispatcher at a time per database.

Whose clock decides when a lease lapses: on PostgreSQL, the database's own
(``clock_timestamp()``, read inside the statement that takes or checks the lease), because
dispatchers may run on hosts whose clocks differ: a standby whose clock runs a minute ahead
would otherwise find a live lease already lapsed and take it from a dispatcher that is still
working. On SQLite every dispatcher runs on the one host that holds the file, so they all
read the same clock and the local ``time.time()`` is enough.

The holder itself never compares these stamps with its own clock: it counts its lease from
just before it asked for it, on its monotonic clock (see ``Dispatcher._lease_valid``), which
ends no later than the database's expiry whatever the two clocks say.
"""

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, case, cast, delete, func, literal, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from bridge.store.tables import LEASES


def _database_clock() -> Any:
    """PostgreSQL's wall clock at this very moment, in seconds since the epoch."""
    return cast(func.extract("epoch", func.clock_timestamp()), Float)


def _uses_database_clock(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _clock(session: Session, clock: float | None) -> Any:
    """The lease clock as a SQL expression: ``clock`` when given (tests), else the
    database's clock on PostgreSQL and the local one on SQLite."""
    if clock is not None:
        return literal(clock, Float)
    if _uses_database_clock(session):
        return _database_clock()
    return literal(time.time(), Float)


def lease_clock(*, session: Session) -> float:
    """Now, on the clock leases are stamped with (to say how long one has left)."""
    if _uses_database_clock(session):
        return float(session.connection().execute(select(_database_clock())).scalar_one())
    return time.time()


def acquire_lease(
    *, session: Session, name: str, holder: str, ttl: float, clock: float | None = None
) -> bool:
    """Take or renew a named lease; True if ``holder`` has it for ``ttl`` seconds from now.

    ``clock`` overrides the lease clock (tests simulate time with it); dispatchers leave
    it out, so PostgreSQL decides by its own clock and SQLite by the host's.
    """
    conn = session.connection()
    at = _clock(session, clock)
    changed = conn.execute(
        update(LEASES)
        .where(LEASES.c.name == name)
        .where((LEASES.c.holder == holder) | (LEASES.c.expires_at < at))
        .values(
            holder=holder,
            expires_at=at + ttl,
            # SET reads the row as it was: a renewal keeps the time the holder took it.
            acquired_at=case(
                (LEASES.c.holder == holder, func.coalesce(LEASES.c.acquired_at, at)),
                else_=at,
            ),
        )
    ).rowcount
    if changed:
        return True
    # No row yet: insert one, unless a rival inserted it meanwhile (then it is the rival's).
    if _uses_database_clock(session):
        # Imported here: the PostgreSQL dialect's modules cost a SQLite dispatcher's
        # start-up about 20 ms, and start-up is what a short graph waits for.
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        insert = pg_insert
    else:
        insert = sqlite_insert
    inserted = conn.execute(
        insert(LEASES)
        .values(name=name, holder=holder, expires_at=at + ttl, acquired_at=at)
        .on_conflict_do_nothing(index_elements=[LEASES.c.name])
        .returning(LEASES.c.name)
    ).first()
    return inserted is not None


def holds_lease(*, session: Session, name: str, holder: str, clock: float | None = None) -> bool:
    """Whether ``holder`` has the lease now (or at ``clock``, when given)."""
    row = (
        session.connection()
        .execute(
            select(LEASES.c.holder).where(
                LEASES.c.name == name,
                LEASES.c.holder == holder,
                LEASES.c.expires_at > _clock(session, clock),
            )
        )
        .first()
    )
    return row is not None


def release_lease(*, session: Session, name: str, holder: str) -> None:
    session.connection().execute(
        delete(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder)
    )


def lease_holder(*, session: Session, name: str) -> tuple[str, float] | None:
    row = (
        session.connection()
        .execute(select(LEASES.c.holder, LEASES.c.expires_at).where(LEASES.c.name == name))
        .first()
    )
    return None if row is None else (row.holder, row.expires_at)


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: str
    acquired_at: float | None
    """Seconds since the epoch on the lease clock (``lease_clock``) when ``holder`` took it."""
    expires_at: float


def list_leases(*, session: Session, prefix: str = "") -> list[LeaseInfo]:
    """Every lease whose name starts with ``prefix``, expired ones included."""
    query = select(LEASES.c.name, LEASES.c.holder, LEASES.c.acquired_at, LEASES.c.expires_at)
    if prefix:
        query = query.where(LEASES.c.name.startswith(prefix, autoescape=True))
    rows = session.connection().execute(query.order_by(LEASES.c.name))
    return [LeaseInfo(r.name, r.holder, r.acquired_at, r.expires_at) for r in rows]
