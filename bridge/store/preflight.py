"""A first look at a SQLite file, read-only, before any engine opens it.

Opening a SQLite file through the engine writes to it (the WAL journal mode is stored
in the file's header), so what must leave a file byte-for-byte untouched is decided
here first, on a plain ``sqlite3`` connection in read-only mode: a file written by a
newer bridge, a Task Coordinator file (only ``bridge db adopt`` may change it), a file
at an older revision that must not be upgraded.
"""

import os
import sqlite3
from urllib.parse import quote

from bridge.defaults import BUSY_TIMEOUT_MS
from bridge.store.schema import HEAD, SchemaState, classify


def is_file(database: str | None) -> bool:
    """Whether a SQLite URL's database is a file name (not ``:memory:`` or a ``file:`` URI)."""
    return bool(database) and database != ":memory:" and not str(database).startswith("file:")


def shown_path(database: str) -> str:
    """A file name as messages show it: relative names start with ``./``."""
    if not os.path.isabs(database) and not database.startswith("."):
        return os.path.join(".", database)
    return database


def read_only_uri(database: str) -> str:
    """A ``file:`` URI that can only read: ``mode=ro``, and ``immutable`` when the folder
    cannot hold the WAL index SQLite would otherwise need to create."""
    path = os.path.abspath(database)
    folder_writable = os.access(os.path.dirname(path), os.W_OK | os.X_OK)
    options = "mode=ro" if folder_writable or os.path.exists(f"{path}-shm") else "immutable=1"
    return f"file:{quote(path)}?{options}"


def connect_read_only(database: str) -> sqlite3.Connection:
    return sqlite3.connect(
        read_only_uri(database), uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )


def sqlite_state(database: str) -> SchemaState | None:
    """The schema state of a SQLite file, read without writing anything.

    None when there is no file or it cannot be read as a database: the engine then
    says why, as it always has. A file at head costs one query.
    """
    if not os.path.isfile(database):
        return None
    try:
        conn = connect_read_only(database)
    except sqlite3.Error:
        return None
    try:
        try:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError:
            rows = None  # no version table (or not a database: the next query says)
        if rows is not None and len(rows) == 1 and rows[0][0] == HEAD:
            return SchemaState("head", HEAD)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
        revision = rows[0][0] if rows else None
        return classify(tables, columns, revision)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def is_task_coordinator(path: str) -> bool:
    """Whether ``path`` is a SQLite file made by the Task Coordinator (bridge's predecessor).

    Its ``tasks`` table has the seed columns and no ``kind``, and there is no version
    table. Bridge tables may sit beside it, empty: an earlier bridge created them on
    first use before it failed on the missing ``kind``. Reads only; a missing, empty or
    unreadable file is not one.
    """
    state = sqlite_state(path)
    return state is not None and state.kind == "task-coordinator"
