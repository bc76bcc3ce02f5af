"""Running the Alembic revisions in ``bridge/store/migrations``: upgrade (locked, once),
the SQL of an upgrade for a DBA, the current revision, the history.

Users have no ``alembic.ini``: the ``Config`` is built here. Upgrades always run on a
connection bridge hands to Alembic, inside one transaction that holds a lock, so that
several processes opening an old or fresh database at once upgrade it exactly once:
SQLite takes its write lock (``BEGIN IMMEDIATE``) for the whole upgrade; PostgreSQL
takes a transaction-scoped advisory lock. The others wait, then find it at head.
"""

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from bridge.settings import redact_text, redact_url
from bridge.store import preflight
from bridge.store.errors import StoreError
from bridge.store.schema import HEAD, SchemaState, read_state, refuse

MIGRATIONS = Path(__file__).with_name("migrations")

ADVISORY_LOCK = 0x62726964676531
"""PostgreSQL advisory lock key held while the schema is upgraded ("bridge1" in hex)."""

BACKOFF_INDEX = (
    "CREATE INDEX ix_tasks_backoff ON tasks (not_before)"
    " WHERE status = 'available' AND not_before IS NOT NULL"
)
"""The one index of 0.1.0 that its very first commit did not make (SQLite and PostgreSQL)."""


def alembic_config(**attributes: object) -> Config:
    """Alembic's configuration, in code: the shipped revisions, and ``attributes`` for
    ``env.py`` (``connection`` online, ``dialect_name`` offline)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes.update(attributes)
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


# ---------------------------------------------------------------------------- upgrade


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the schema lock until it commits (or rolls back)."""
    if engine.dialect.name == "sqlite":
        with engine.execution_options(bridge_write=True).begin() as conn:  # BEGIN IMMEDIATE
            yield conn
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
        yield conn


def upgrade(engine: Engine, *, where: str = "database") -> tuple[SchemaState, SchemaState]:
    """Bring the database to head under the schema lock; returns its state before and after.

    Whoever gets the lock first upgrades; the others find the database at head and
    change nothing. Refused (nothing written) when the database is newer than this
    bridge, the Task Coordinator's, or not bridge's.
    """
    with locked(engine) as conn:
        return upgrade_in(conn, where=where)


def upgrade_in(
    connection: Connection, *, where: str = "database"
) -> tuple[SchemaState, SchemaState]:
    """Bring the database behind ``connection`` to head inside the caller's transaction.

    For code that already holds its own transaction and lock (``bridge db adopt``:
    convert, then upgrade, then commit once), e.g.::

        engine = open_engine(url, check_schema=False)
        with engine.execution_options(bridge_write=True).begin() as conn:  # BEGIN IMMEDIATE
            ...  # bring the file to the 0.1.0 shape
            upgrade_in(conn, where=shown_path)

    The caller commits or rolls back: on SQLite and PostgreSQL alike DDL is
    transactional, so a rollback undoes the upgrade too (on SQLite only if the
    transaction was begun explicitly, as bridge's engines do; the plain ``sqlite3``
    driver would otherwise run each DDL statement on its own).

    An unversioned database (0.1.0, or changed in place before revisions) is first
    completed to revision 0001 and stamped with it. Returns the state before and after.
    """
    before = read_state(connection)
    refuse(before, where)
    if before.kind == "head":
        return before, before
    if before.kind == "unversioned":
        _baseline(connection)
    config = alembic_config(connection=connection)
    command.upgrade(config, "head")
    return before, read_state(connection)


def _baseline(connection: Connection) -> None:
    """Make an unversioned bridge database exactly revision 0001, and stamp it so."""
    if "ix_tasks_backoff" not in {i["name"] for i in inspect(connection).get_indexes("tasks")}:
        connection.execute(text(BACKOFF_INDEX))
    command.stamp(alembic_config(connection=connection), "0001")


# ------------------------------------------------------------------- looking, not writing


@dataclass(frozen=True)
class Looked:
    """A database seen without writing to it."""

    state: SchemaState
    dialect: str
    present: dict[str, list[str]]
    """For ``--sql`` on an unversioned database: what revision 0002 finds already there."""


def where_of(url: str) -> str:
    """The database as messages name it: a SQLite file's shown path, else the URL
    without its secrets."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return redact_url(url)
    if parsed.get_backend_name() == "sqlite" and preflight.is_file(parsed.database):
        return preflight.shown_path(str(parsed.database))
    return redact_url(url)


def look(url: str, *, missing_ok: bool = True) -> Looked:
    """The schema state of the database at ``url``, read without writing anything
    (a SQLite file is opened read-only, never switched to WAL). A missing SQLite file
    is an empty database, or with ``missing_ok=False`` an error."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(
            f"not a database URL: {redact_url(url)} (e.g. sqlite:///file.db)"
        ) from None
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and preflight.is_file(database):
        path = str(database)
        if not os.path.isfile(path):
            if missing_ok:
                return Looked(SchemaState("empty"), "sqlite", {})
            raise StoreError(
                f"no database at {preflight.shown_path(path)} (bridge add or bridge run creates it)"
            )
        engine = create_engine("sqlite://", creator=lambda: preflight.connect_read_only(path))
    else:
        try:
            engine = create_engine(url)
        except Exception as exc:  # a missing driver, bad options
            raise StoreError(
                f"cannot use database {redact_url(url)}: {redact_text(str(exc), url)}"
            ) from None
    try:
        with engine.connect() as conn:
            state = read_state(conn)
            present = _present(conn) if state.kind == "unversioned" else {}
    except DBAPIError as exc:
        raise StoreError(
            f"cannot read database {where_of(url)}: {redact_text(str(exc.orig), url)}"
        ) from None
    finally:
        engine.dispose()
    return Looked(state, engine.dialect.name, present)


def _present(conn: Connection) -> dict[str, list[str]]:
    inspector = inspect(conn)
    tables = inspector.get_table_names()
    columns = [f"{t}.{c['name']}" for t in ("tasks", "leases") for c in inspector.get_columns(t)]
    keys: list[str] = []
    if "bridge_meta" in tables:
        keys = [row[0] for row in conn.execute(text("SELECT key FROM bridge_meta"))]
    indexes = [i["name"] for i in inspector.get_indexes("tasks")]
    return {"tables": tables, "columns": columns, "meta_keys": keys, "indexes": indexes}


def upgrade_sql(looked: Looked) -> str:
    """The SQL that would bring the database ``looked`` at to head, for its dialect.

    Empty at head. An unversioned database gets the statements that stamp it 0001 first.
    """
    state = looked.state
    if state.kind == "head":
        return ""
    buffer = io.StringIO()

    def offline(revisions: str, *, stamp: bool = False) -> None:
        config = alembic_config(dialect_name=looked.dialect, bridge_present=looked.present)
        config.output_buffer = buffer
        if stamp:
            command.stamp(config, revisions, sql=True)
        else:
            command.upgrade(config, revisions, sql=True)

    if state.kind == "empty":
        offline("head")
    elif state.kind == "older":
        offline(f"{state.revision}:head")
    elif state.kind == "unversioned":
        buffer.write("-- an unversioned bridge database: completed to revision 0001, stamped\n")
        if "ix_tasks_backoff" not in looked.present.get("indexes", []):
            buffer.write(f"{BACKOFF_INDEX};\n\n")
        offline("0001", stamp=True)
        offline("0001:head")
    return buffer.getvalue()


# -------------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    doc: str
    is_head: bool


def history() -> list[Revision]:
    """Every shipped revision, newest first."""
    return [
        Revision(
            revision=script.revision,
            down_revision=script.down_revision,  # type: ignore[arg-type]
            doc=(script.doc or "").strip(),
            is_head=script.revision == HEAD,
        )
        for script in script_directory().walk_revisions()
    ]
