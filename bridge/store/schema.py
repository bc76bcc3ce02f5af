"""Which schema a database has, keeping it at this bridge's revision, and the database's
own facts (identity, fencing tokens).

Every command opens the database through ``ensure_schema``: at this bridge's head it
costs one query; anything else is recognised here (``SchemaState``) and, when it may
be, upgraded by ``bridge.store.migrate`` under a lock. Alembic is imported only then,
so a command on an up-to-date database never loads it.
"""

import logging
from dataclasses import dataclass

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from bridge.store.errors import StoreError

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)
"""Alembic logs each step at INFO (and its plug-ins as it loads): bridge says what it did."""

REVISIONS = ("0001", "0002", "0003", "0004")
"""Every revision this bridge knows, oldest first (a test checks them against Alembic's)."""

HEAD = REVISIONS[-1]
"""The revision this bridge needs."""

BRIDGE_TABLES = frozenset({"tasks", "task_edges", "task_events", "worker_slots", "leases"})
"""The tables of revision 0001 (release 0.1.0)."""

TASK_COORDINATOR_COLUMNS = (
    "id",
    "description",
    "status",
    "worker",
    "dependencies",
    "output",
    "error",
    "started_at",
    "completed_at",
    "created_at",
)
"""The columns of the Task Coordinator's ``tasks`` table, in order (bridge's seed columns:
its ``tasks`` has them too, and ``kind``)."""

UNVERSIONED = "unversioned"


@dataclass(frozen=True)
class SchemaState:
    """What a database holds, as far as bridge's schema goes.

    ``kind`` is one of: ``head`` (this bridge's revision), ``older`` (a known older
    revision), ``newer`` (a revision this bridge does not know), ``empty`` (no bridge
    tables), ``unversioned`` (bridge tables made before revisions existed: 0.1.0 or a
    later in-place change), ``task-coordinator`` (the original system's file),
    ``foreign`` (a ``tasks`` table that is neither).
    """

    kind: str
    revision: str | None = None

    @property
    def shown(self) -> str:
        """The schema as messages name it: its revision, or ``unversioned``/``empty``."""
        if self.revision is not None:
            return self.revision
        return UNVERSIONED if self.kind == "unversioned" else self.kind


def classify(tables: set[str], task_columns: set[str], revision: str | None) -> SchemaState:
    """The state of a database from its table names, its ``tasks`` columns and its stamp."""
    if revision is not None:
        if revision == HEAD:
            return SchemaState("head", revision)
        if revision in REVISIONS:
            return SchemaState("older", revision)
        return SchemaState("newer", revision)
    if "tasks" not in tables:
        return SchemaState("empty")
    if "kind" in task_columns and BRIDGE_TABLES <= tables:
        return SchemaState("unversioned")
    if set(TASK_COORDINATOR_COLUMNS) <= task_columns and "kind" not in task_columns:
        return SchemaState("task-coordinator")
    return SchemaState("foreign")


def read_state(conn: Connection) -> SchemaState:
    """The state of the database behind ``conn`` (reads only; any transaction is the caller's)."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    columns = {c["name"] for c in inspector.get_columns("tasks")} if "tasks" in tables else set()
    revision = None
    if "alembic_version" in tables:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        if len(rows) > 1:
            raise StoreError("database has more than one schema revision stamped: cannot use it")
        revision = rows[0][0] if rows else None
    return classify(tables, columns, revision)


def refuse(state: SchemaState, where: str, *, auto_migrate: bool = True) -> None:
    """Raise the error a command gets on a database in ``state``; return if it may go on.

    ``where`` names the database (a shown path or a redacted URL). With ``auto_migrate``
    an older or unversioned database may go on (it is upgraded); an empty one always may.
    """
    if state.kind == "newer":
        raise StoreError(f"database was written by a newer bridge (schema {state.revision})")
    if state.kind == "task-coordinator":
        raise StoreError(
            f"{where} was made by the Task Coordinator;"
            " adopt it with 'bridge db adopt --kind NAME' (a copy is kept)"
        )
    if state.kind == "foreign":
        raise StoreError(f"{where} has a 'tasks' table that is not bridge's: not a bridge database")
    if state.kind in ("older", "unversioned") and not auto_migrate:
        raise needs_upgrade(state)


def needs_upgrade(state: SchemaState) -> StoreError:
    return StoreError(
        f"database schema is at {state.shown}, this bridge needs {HEAD}: run 'bridge db upgrade'"
    )


def stamped_revision(engine: Engine) -> str | None:
    """The stamped revision in one query; None when there is no version table (yet)."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no version table: the caller looks closer
            conn.rollback()
            return None


def ensure_schema(engine: Engine, auto_migrate: bool = True, *, where: str = "database") -> None:
    """Make sure the database has this bridge's schema before a command uses it.

    At head: one query and back. Empty: created at head. Older or unversioned (0.1.0,
    or changed in place before revisions existed): upgraded, unless ``auto_migrate`` is
    off, then refused with the command to run. Newer, Task Coordinator's, foreign:
    refused, nothing written. The upgrade itself runs once under a lock, however many
    processes start at once (``bridge.store.migrate.upgrade``).
    """
    if stamped_revision(engine) == HEAD:
        return
    with engine.connect() as conn:
        state = read_state(conn)
    if state.kind == "head":
        return
    refuse(state, where, auto_migrate=auto_migrate)
    from bridge.store import migrate  # Alembic is loaded only when there is work to do

    before, after = migrate.upgrade(engine, where=where)
    if before.kind in ("older", "unversioned") and before != after:
        log.info("database schema upgraded from %s to %s", before.shown, after.shown)


_IDENTITY = text("SELECT value FROM bridge_meta WHERE key = 'identity'")
_TAKE_TOKENS = text(
    "UPDATE bridge_meta SET value = CAST(CAST(value AS BIGINT) + :count AS TEXT)"
    " WHERE key = 'next_token' RETURNING value"
)
"""SQLite has RETURNING since 3.35 (2021); Python 3.11's builds bundle newer ones."""


def namespace(*, session: Session) -> str:
    """The database's Redis namespace: the first 12 hex digits of its identity."""
    value = session.connection().execute(_IDENTITY).scalar()
    if value is None:
        raise RuntimeError("database has no identity: ensure_schema was not run")
    return str(value)[:12]


def take_tokens(*, session: Session, count: int) -> int:
    """Reserve ``count`` fencing tokens in the caller's write transaction; returns the first.

    Tokens only grow, over the database's whole life: ``clean`` and re-added ids never
    bring one back, so a report from before can never match a later attempt.
    """
    # One statement: the UPDATE takes the row's write lock, so two transactions that
    # reserve at once (PostgreSQL under READ COMMITTED) queue instead of reading the
    # same value, and RETURNING gives each what its own increment left.
    after = int(session.connection().execute(_TAKE_TOKENS, {"count": count}).scalar_one())
    return after - count
