"""Retention: finding finished graphs older than a cutoff, and deleting them in chunks.

The rule: a task may go only when its whole graph may go. Its graph is its weakly
connected component over ``task_edges`` (every task it depends on, every task that
depends on it, and so on in both directions). The component goes when every member
is finished (``done``, ``failed``, ``cancelled``), none is held by a worker slot, and
each member's completion (``completed_at``, else ``updated_at``, else ``created_at``)
is older than the cutoff. So nothing a live task depends on or reports to disappears.

Planning reads the finished, old tasks (the candidates) and then every edge, streamed,
once: an edge between two candidates joins them (union-find); an edge from a candidate
to any other task poisons the candidate's component, which is kept. Memory grows with
the candidates, never with the live tasks, and no query grows with the graph's depth.

Deleting happens in batches of at most ``PRUNE_CHUNK`` tasks, one transaction each.
Every batch re-checks, under the write lock (``FOR UPDATE`` on PostgreSQL), that what
it deletes still obeys the rule: the members still to go are all still finished, old
and unheld, and no edge leads out of them. A component that changed since the plan (a
``bridge retry``, a new task depending on it) is kept whole, or, if it was split over
batches and partly gone already, the rest of it is kept. A component larger than a
batch is split with its dependents first, so whatever is left of it still has every
task it depends on.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, or_, select
from sqlmodel import Session

from bridge.defaults import PRUNE_CHUNK, PRUNE_READ_CHUNK
from bridge.states import TaskStatus
from bridge.store.tables import EDGES, EVENTS, LOGS, SLOTS, TASKS, _chunks

FINISHED = tuple(s.value for s in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED))

FINISHED_AT = func.coalesce(TASKS.c.completed_at, TASKS.c.updated_at, TASKS.c.created_at)
"""When a task finished: cancelled tasks that never ran may have no ``completed_at``; a
task with none of the three is never pruned (a NULL is older than nothing)."""


@dataclass(frozen=True)
class Piece:
    """Part of one component for one transaction."""

    component: int
    """Index of the component in the plan: a piece that fails its check keeps the rest."""
    delete: tuple[str, ...]
    """The tasks this transaction deletes."""
    check: tuple[str, ...]
    """The component's members still to go (``delete`` and later pieces'): all of them
    must still obey the rule, with no edge leading out of them."""


@dataclass
class PrunePlan:
    cutoff: str
    batches: list[list[Piece]] = field(default_factory=list)
    """At most ``PRUNE_CHUNK`` tasks each, whole components where they fit."""
    components: list[tuple[str, ...]] = field(default_factory=list)
    """Every prunable component's members, oldest graphs (by insertion) first."""

    @property
    def task_ids(self) -> list[str]:
        return [task_id for members in self.components for task_id in members]


@dataclass
class BatchResult:
    deleted: list[str] = field(default_factory=list)
    kept: set[int] = field(default_factory=set)
    """Components found changed: their remaining members stay."""


def plan_prune(*, session: Session, cutoff: str, chunk: int = PRUNE_CHUNK) -> PrunePlan:
    """The components that may be pruned at ``cutoff``, split into batches (reads only)."""
    conn = session.connection()
    index: dict[str, int] = {}
    ids: list[str] = []
    found = conn.execution_options(stream_results=True, yield_per=PRUNE_READ_CHUNK).execute(
        select(TASKS.c.id)
        .where(TASKS.c.status.in_(FINISHED), FINISHED_AT < cutoff)
        .order_by(TASKS.c.seq)
    )
    for rows in found.partitions(PRUNE_READ_CHUNK):
        for (task_id,) in rows:
            index[task_id] = len(ids)
            ids.append(task_id)
    parent = list(range(len(ids)))
    poisoned: list[int] = []
    for (task_id,) in conn.execute(select(SLOTS.c.task_id).where(SLOTS.c.task_id.is_not(None))):
        if task_id in index:
            poisoned.append(index[task_id])

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if ids:
        edges = conn.execution_options(stream_results=True, yield_per=PRUNE_READ_CHUNK).execute(
            select(EDGES.c.task_id, EDGES.c.depends_on)
        )
        for rows in edges.partitions(PRUNE_READ_CHUNK):
            for task_id, depends_on in rows:
                a, b = index.get(task_id), index.get(depends_on)
                if a is not None and b is not None:
                    ra, rb = root(a), root(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)  # the oldest member stays the root
                elif a is not None:
                    poisoned.append(a)
                elif b is not None:
                    poisoned.append(b)
    bad = {root(i) for i in poisoned}
    groups: dict[int, list[str]] = {}
    for i, task_id in enumerate(ids):
        r = root(i)
        if r not in bad:
            groups.setdefault(r, []).append(task_id)
    plan = PrunePlan(cutoff=cutoff, components=[tuple(m) for m in groups.values()])
    big = [n for n, members in enumerate(plan.components) if len(members) > chunk]
    if big:
        order = _dependents_first(conn, [plan.components[n] for n in big])
        for n, members in zip(big, order, strict=True):
            plan.components[n] = members
    plan.batches = _pack(plan.components, chunk)
    return plan


def _dependents_first(conn, components: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Each component's members ordered so every task comes before all it depends on
    (a reversed topological order), from a second pass over the edges."""
    where = {task_id: n for n, members in enumerate(components) for task_id in members}
    depends: dict[str, list[str]] = {}
    dependents_left: dict[str, int] = dict.fromkeys(where, 0)
    edges = conn.execution_options(stream_results=True, yield_per=PRUNE_READ_CHUNK).execute(
        select(EDGES.c.task_id, EDGES.c.depends_on)
    )
    for rows in edges.partitions(PRUNE_READ_CHUNK):
        for task_id, depends_on in rows:
            if task_id in where and depends_on in where:
                depends.setdefault(task_id, []).append(depends_on)
                dependents_left[depends_on] += 1
    ordered: list[tuple[str, ...]] = []
    for members in components:
        ready = [t for t in members if dependents_left[t] == 0]
        out: list[str] = []
        while ready:
            task_id = ready.pop()
            out.append(task_id)
            for dep in depends.get(task_id, ()):
                dependents_left[dep] -= 1
                if dependents_left[dep] == 0:
                    ready.append(dep)
        placed = set(out)
        out += [t for t in members if t not in placed]  # a cycle (adopted data): last
        ordered.append(tuple(out))
    return ordered


def _pack(components: Sequence[tuple[str, ...]], chunk: int) -> list[list[Piece]]:
    batches: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for n, members in enumerate(components):
        if len(members) > chunk:
            if current:
                batches.append(current)
                current, size = [], 0
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                batches.append([Piece(n, part, members[start:])])
            continue
        if size + len(members) > chunk:
            batches.append(current)
            current, size = [], 0
        current.append(Piece(n, members, members))
        size += len(members)
    if current:
        batches.append(current)
    return batches


def prune_batch(
    *, session: Session, batch: Iterable[Piece], cutoff: str, skip: set[int] | None = None
) -> BatchResult:
    """Delete one batch in the caller's write transaction, re-checking the rule first.

    Pieces of components in ``skip`` (found changed by an earlier batch) are left alone.
    """
    skip = skip or set()
    pieces = [p for p in batch if p.component not in skip]
    result = BatchResult(kept=_changed(session, pieces, cutoff))
    going = [t for p in pieces if p.component not in result.kept for t in p.delete]
    if not going:
        return result
    conn = session.connection()
    for ids in _chunks(going):
        conn.execute(delete(EVENTS).where(EVENTS.c.task_id.in_(ids)))
        conn.execute(delete(LOGS).where(LOGS.c.task_id.in_(ids)))
        conn.execute(
            delete(EDGES).where(or_(EDGES.c.task_id.in_(ids), EDGES.c.depends_on.in_(ids)))
        )
        conn.execute(delete(TASKS).where(TASKS.c.id.in_(ids), TASKS.c.status.in_(FINISHED)))
    result.deleted = going
    return result


def _changed(session: Session, pieces: Sequence[Piece], cutoff: str) -> set[int]:
    """The components among ``pieces`` that no longer obey the rule. Each piece's
    ``check`` members are locked (PostgreSQL; SQLite's write lock covers the whole
    file) and must still be finished before the cutoff, held by no slot, and joined
    by no edge to a task outside them."""
    conn = session.connection()
    owner = {task_id: piece.component for piece in pieces for task_id in piece.check}
    changed: set[int] = set()
    for ids in _chunks(list(owner)):
        rows = conn.execute(
            select(TASKS.c.id, TASKS.c.status, FINISHED_AT.label("finished_at"))
            .where(TASKS.c.id.in_(ids))
            .with_for_update()
        )
        for row in rows:
            if row.status not in FINISHED or row.finished_at is None or row.finished_at >= cutoff:
                changed.add(owner[row.id])
        for (task_id,) in conn.execute(select(SLOTS.c.task_id).where(SLOTS.c.task_id.in_(ids))):
            changed.add(owner[task_id])
        for a, b in conn.execute(
            select(EDGES.c.task_id, EDGES.c.depends_on).where(
                or_(EDGES.c.task_id.in_(ids), EDGES.c.depends_on.in_(ids))
            )
        ):
            if owner.get(a) != owner.get(b):
                changed.update(owner[t] for t in (a, b) if t in owner)
    return changed
