"""Named leases: one dispatcher at a time per queue."""

from dataclasses import dataclass

from sqlalchemy import case, delete, func, insert, select, update
from sqlmodel import Session

from bridge.store.tables import LEASES


def acquire_lease(*, session: Session, name: str, holder: str, ttl: float, clock: float) -> bool:
    """Take or renew a named lease; True if ``holder`` has it until ``clock + ttl``."""
    conn = session.connection()
    changed = conn.execute(
        update(LEASES)
        .where(LEASES.c.name == name)
        .where((LEASES.c.holder == holder) | (LEASES.c.expires_at < clock))
        .values(
            holder=holder,
            expires_at=clock + ttl,
            # SET reads the row as it was: a renewal keeps the time the holder took it.
            acquired_at=case(
                (LEASES.c.holder == holder, func.coalesce(LEASES.c.acquired_at, clock)),
                else_=clock,
            ),
        )
    ).rowcount
    if changed:
        return True
    exists = conn.execute(select(LEASES.c.holder).where(LEASES.c.name == name)).first()
    if exists is not None:
        return False
    conn.execute(
        insert(LEASES).values(name=name, holder=holder, expires_at=clock + ttl, acquired_at=clock)
    )
    return True


def holds_lease(*, session: Session, name: str, holder: str, clock: float) -> bool:
    """Whether ``holder`` has the lease until at least ``clock``."""
    row = (
        session.connection()
        .execute(
            select(LEASES.c.holder).where(
                LEASES.c.name == name, LEASES.c.holder == holder, LEASES.c.expires_at > clock
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
    """Seconds on the dispatcher's clock (``time.time()``) when ``holder`` took it."""
    expires_at: float


def list_leases(*, session: Session, prefix: str = "") -> list[LeaseInfo]:
    """Every lease whose name starts with ``prefix``, expired ones included."""
    query = select(LEASES.c.name, LEASES.c.holder, LEASES.c.acquired_at, LEASES.c.expires_at)
    if prefix:
        query = query.where(LEASES.c.name.startswith(prefix, autoescape=True))
    rows = session.connection().execute(query.order_by(LEASES.c.name))
    return [LeaseInfo(r.name, r.holder, r.acquired_at, r.expires_at) for r in rows]
