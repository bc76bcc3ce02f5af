"""The tables. ``tasks`` and ``worker_slots`` keep the seed schema's names and
columns; everything else is an addition the seed allows.

Times are ISO-8601 UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``), as the seed's
``created_at TEXT``: they sort as strings, on SQLite and elsewhere alike.
"""

from sqlalchemy import Column, Float, Index, Integer, Text, text
from sqlmodel import Field, SQLModel

TIMEOUT_TYPE = Float().with_variant(Integer(), "sqlite")
"""``tasks.timeout`` holds fractional seconds. SQLite keeps the column declared INTEGER:
its type affinity stores 1.5 as REAL unchanged, and renaming the type would copy the
whole table. PostgreSQL's column became double precision (revision 0004)."""


class Task(SQLModel, table=True):
    __tablename__ = "tasks"

    id: str = Field(primary_key=True)
    description: str = Field(default="", sa_column_kwargs={"nullable": False})
    status: str = Field(sa_column_kwargs={"nullable": False})
    worker: str | None = None
    dependencies: str | None = Field(default=None, sa_column=Column(Text))
    """JSON array of task ids, as declared; readiness uses ``task_edges`` instead."""
    output: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    started_at: str | None = None
    completed_at: str | None = None
    created_at: str | None = Field(
        default=None, sa_column_kwargs={"server_default": text("CURRENT_TIMESTAMP")}
    )
    kind: str = Field(default="noop", sa_column_kwargs={"nullable": False})
    payload: str | None = Field(default=None, sa_column=Column(Text))
    priority: int = Field(default=0, sa_column_kwargs={"nullable": False})
    attempts: int = Field(default=0, sa_column_kwargs={"nullable": False})
    """Dispatches so far; the current attempt is the fencing token of every report."""
    max_attempts: int = Field(default=1, sa_column_kwargs={"nullable": False})
    failures: int = Field(default=0, sa_column_kwargs={"nullable": False})
    """Attempts whose handler failed (a lost job is re-sent without counting here)."""
    timeout: float | None = Field(default=None, sa_column=Column("timeout", TIMEOUT_TYPE))
    """Seconds an attempt may run (fractions allowed)."""
    pending_deps: int = Field(default=0, sa_column_kwargs={"nullable": False})
    """Dependencies not yet done: the task is ready when this is 0."""
    seq: int = Field(default=0, sa_column_kwargs={"nullable": False})
    """Insertion order, the tie-breaker after priority."""
    job_id: str | None = None
    queued_at: str | None = None
    not_before: str | None = None
    """Earliest dispatch time of a task waiting out a retry backoff."""
    updated_at: str | None = None
    note: str | None = Field(default=None, sa_column=Column(Text))
    """Why the task is in its state, when that is not obvious (shown by ``bridge show``)."""
    queue: str = Field(
        default="bridge", sa_column_kwargs={"nullable": False, "server_default": "bridge"}
    )
    """The RQ queue its jobs go to; it is judged only against that queue."""
    run: str | None = Field(default=None, index=True)
    """The run the task belongs to (``runs.name``); NULL only for tasks older than runs."""
    local_id: str | None = None
    """The id as the graph wrote it, when the run scopes ids (the stored ``id`` is then
    derived from the run and this); NULL when the stored id is the id as given."""
    pool: str | None = None
    """The pool (``pools.name``) that bounds how many tasks like it run at once."""
    progress: float | None = None
    """The current attempt's last reported fraction done (0..1)."""
    progress_message: str | None = Field(default=None, sa_column=Column(Text))
    claim_expires_at: str | None = None
    """External tasks: when the claim lapses unless heartbeated (UTC ISO text)."""


IN_FLIGHT_WHERE = "status IN ('queued', 'working')"
"""The in-flight statuses as SQL text: queries must spell them as literals, exactly so,
for SQLite (and PostgreSQL's generic plans) to use ``ix_tasks_in_flight``."""

Index(
    "ix_tasks_in_flight",
    Task.__table__.c.status,
    sqlite_where=text(IN_FLIGHT_WHERE),
    postgresql_where=text(IN_FLIGHT_WHERE),
)
"""Only the tasks in flight, never the history. A plain index on ``status`` would serve
every status, and PostgreSQL's planner, with statistics older than a backlog just added
(``available`` looks rare), took it over ``ix_tasks_ready`` and ``ix_tasks_backoff``:
it then read and sorted every available task on each claim."""
Index("ix_tasks_seq", Task.__table__.c.seq)
Index(
    "ix_tasks_ready",
    Task.__table__.c.priority.desc(),
    Task.__table__.c.seq,
    sqlite_where=text("status = 'available' AND pending_deps = 0"),
    postgresql_where=text("status = 'available' AND pending_deps = 0"),
)

Index(
    "ix_tasks_backoff",
    Task.__table__.c.not_before,
    sqlite_where=text("status = 'available' AND not_before IS NOT NULL"),
    postgresql_where=text("status = 'available' AND not_before IS NOT NULL"),
)


class TaskEdge(SQLModel, table=True):
    """One row per dependency: ``task_id`` waits for ``depends_on``."""

    __tablename__ = "task_edges"

    task_id: str = Field(primary_key=True, foreign_key="tasks.id")
    depends_on: str = Field(primary_key=True, foreign_key="tasks.id", index=True)


class TaskEvent(SQLModel, table=True):
    """The audit trail: one row per state change, and per ignored report."""

    __tablename__ = "task_events"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    task_id: str = Field(foreign_key="tasks.id", index=True)
    from_status: str | None = None
    to_status: str
    attempt: int = 0
    worker: str | None = None
    at: str
    detail: str | None = Field(default=None, sa_column=Column(Text))


class WorkerSlot(SQLModel, table=True):
    __tablename__ = "worker_slots"

    slot: int = Field(primary_key=True)
    worker_id: str | None = None
    active: int = Field(default=0, sa_column_kwargs={"nullable": False, "server_default": "0"})
    task_id: str | None = None
    updated_at: str | None = Field(
        default=None, sa_column_kwargs={"server_default": text("CURRENT_TIMESTAMP")}
    )


class Lease(SQLModel, table=True):
    """A named lease in the database, e.g. the one dispatcher allowed to dispatch."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str
    expires_at: float
    acquired_at: float | None = None
    """When the current holder took the lease (same clock as ``expires_at``); renewals
    keep it, so ``bridge status`` can say since when a dispatcher is in charge."""


class Meta(SQLModel, table=True):
    """Facts about the database itself, one row per key.

    ``identity``: a random id made when the database is created; everything this
    database puts in Redis is namespaced by it, so two databases sharing a Redis
    never read each other's reports. ``next_token``: the next fencing token; every
    dispatch takes a new one, unique over the database's whole life (a re-added id
    or a ``clean`` never brings an old token back).
    """

    __tablename__ = "bridge_meta"

    key: str = Field(primary_key=True)
    value: str


class Run(SQLModel, table=True):
    """A named submission of tasks: a graph file, a Python ``Graph``, or a schedule's
    occurrence. Every task added since runs exist belongs to one."""

    __tablename__ = "runs"

    name: str = Field(primary_key=True)
    created_at: str
    scoped: int = Field(default=0, sa_column_kwargs={"nullable": False, "server_default": "0"})
    """1 when task ids were scoped to the run (stored id derived from run and id)."""
    schedule: str | None = None
    """The schedule that created it, if any."""
    due_at: str | None = None
    """The schedule's due time it was created for (UTC ISO text)."""


class Pool(SQLModel, table=True):
    """A bound on how many tasks naming the pool are in flight at once."""

    __tablename__ = "pools"

    name: str = Field(primary_key=True)
    slots: int
    updated_at: str | None = None


class Schedule(SQLModel, table=True):
    """A graph submitted as a new run at each cron due time."""

    __tablename__ = "schedules"

    name: str = Field(primary_key=True)
    cron: str
    timezone: str = Field(default="UTC", sa_column_kwargs={"server_default": "UTC"})
    graph: str = Field(sa_column=Column(Text, nullable=False))
    """The graph file's task list, as JSON text, stored when the schedule was added."""
    catch_up: int = Field(default=0, sa_column_kwargs={"nullable": False, "server_default": "0"})
    created_at: str
    last_due: str | None = None
    """The latest due time a run was created for (UTC ISO text)."""
    next_due: str | None = None
    """The next due time (UTC ISO text), for listing and for the dispatcher's wake-up."""


class TaskLog(SQLModel, table=True):
    """Lines a handler logged through ``ctx.log``, kept with their attempt."""

    __tablename__ = "task_logs"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    task_id: str = Field(foreign_key="tasks.id", index=True)
    attempt: int
    at: str
    level: str
    message: str = Field(sa_column=Column(Text, nullable=False))
