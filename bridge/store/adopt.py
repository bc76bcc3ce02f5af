"""Adopting a Task Coordinator database: the original system's SQLite file, made a bridge one.

The Task Coordinator (the system bridge replaces) kept ``tasks`` and ``worker_slots``
in ``./task-coordinator.db``. Adoption keeps every row and every seed column value as
stored, turns the ``dependencies`` JSON into edges and brings the file to the schema
bridge 0.1.0 created (no version table); the caller then opens it the usual way, which
brings it to the current schema. A copy of the file is taken first, with SQLite's
online backup API, so it is consistent even while the old server still writes.

Everything happens on the raw ``sqlite3`` module, not SQLAlchemy: the file must be
read before any bridge table exists in it, and the conversion is one ``BEGIN
IMMEDIATE`` transaction that either commits whole or leaves the file as it was.
"""

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bridge.defaults import BUSY_TIMEOUT_MS
from bridge.settings import redact_url
from bridge.store.engine import StoreError, now
from bridge.store.schema import TASK_COORDINATOR_COLUMNS

TC_TASK_COLUMNS = TASK_COORDINATOR_COLUMNS
"""The Task Coordinator's ``tasks`` columns, in order: also bridge's seed columns."""

TC_SLOT_COLUMNS = ("slot", "worker_id", "active", "task_id", "updated_at")

TC_STATUSES = ("available", "working", "claimed", "done", "failed")
"""Every status the Task Coordinator writes (``claimed`` only in its later versions)."""

REOPENED = ("working", "claimed")
"""Held by a Task Coordinator worker when adopted: they become ``available`` and run
again (at-least-once), since nothing will ever report their outcome to bridge."""

BRIDGE_TABLES = ("task_edges", "task_events", "leases", "bridge_meta")
"""Tables an older bridge may have added to a Task Coordinator file before it failed on
the missing ``tasks.kind``; found empty, they are dropped and made again."""


def _table(name: str, *lines: str) -> str:
    """``CREATE TABLE`` as SQLAlchemy wrote it for 0.1.0 (tabs, ``", "`` line ends)."""
    return f"CREATE TABLE {name} (\n\t" + ", \n\t".join(lines) + "\n)"


SCHEMA_0_1_0 = (
    _table(
        "tasks",
        "id VARCHAR NOT NULL",
        "description VARCHAR NOT NULL",
        "status VARCHAR NOT NULL",
        "worker VARCHAR",
        "dependencies TEXT",
        "output TEXT",
        "error TEXT",
        "started_at VARCHAR",
        "completed_at VARCHAR",
        "created_at VARCHAR DEFAULT CURRENT_TIMESTAMP",
        "kind VARCHAR NOT NULL",
        "payload TEXT",
        "priority INTEGER NOT NULL",
        "attempts INTEGER NOT NULL",
        "max_attempts INTEGER NOT NULL",
        "failures INTEGER NOT NULL",
        "timeout INTEGER",
        "pending_deps INTEGER NOT NULL",
        "seq INTEGER NOT NULL",
        "job_id VARCHAR",
        "queued_at VARCHAR",
        "not_before VARCHAR",
        "updated_at VARCHAR",
        "note TEXT",
        "PRIMARY KEY (id)",
    ),
    _table(
        "worker_slots",
        "slot INTEGER NOT NULL",
        "worker_id VARCHAR",
        "active INTEGER DEFAULT '0' NOT NULL",
        "task_id VARCHAR",
        "updated_at VARCHAR DEFAULT CURRENT_TIMESTAMP",
        "PRIMARY KEY (slot)",
    ),
    _table(
        "leases",
        "name VARCHAR NOT NULL",
        "holder VARCHAR NOT NULL",
        "expires_at FLOAT NOT NULL",
        "PRIMARY KEY (name)",
    ),
    _table(
        "task_edges",
        "task_id VARCHAR NOT NULL",
        "depends_on VARCHAR NOT NULL",
        "PRIMARY KEY (task_id, depends_on)",
        "FOREIGN KEY(task_id) REFERENCES tasks (id)",
        "FOREIGN KEY(depends_on) REFERENCES tasks (id)",
    ),
    _table(
        "task_events",
        "id INTEGER NOT NULL",
        "task_id VARCHAR NOT NULL",
        "from_status VARCHAR",
        "to_status VARCHAR NOT NULL",
        "attempt INTEGER NOT NULL",
        "worker VARCHAR",
        "at VARCHAR NOT NULL",
        "detail TEXT",
        "PRIMARY KEY (id)",
        "FOREIGN KEY(task_id) REFERENCES tasks (id)",
    ),
    "CREATE INDEX ix_task_edges_depends_on ON task_edges (depends_on)",
    "CREATE INDEX ix_task_events_task_id ON task_events (task_id)",
    "CREATE INDEX ix_tasks_backoff ON tasks (not_before)"
    " WHERE status = 'available' AND not_before IS NOT NULL",
    "CREATE INDEX ix_tasks_ready ON tasks (priority DESC, seq)"
    " WHERE status = 'available' AND pending_deps = 0",
    "CREATE INDEX ix_tasks_seq ON tasks (seq)",
    "CREATE INDEX ix_tasks_status ON tasks (status)",
)
"""The schema bridge 0.1.0 made (``create_all``, no version table), frozen here as it
was: the migrations recognise exactly this shape as their first revision."""

BLOCKED_PREFIX = "blocked since adoption from the Task Coordinator: "
"""How the ``note`` of a task adopted blocked starts (``bridge show`` prints it)."""

_SHOWN_IDS = 5
"""Ids named per reason (a dependency cycle or many unknown ids would make a long line)."""


@dataclass(frozen=True)
class Blocked:
    """A task whose declared dependencies bridge cannot honour, and why."""

    task_id: str
    status: str
    """Its status under the Task Coordinator."""
    reason: str


@dataclass(frozen=True)
class Reopened:
    task_id: str
    status: str
    """``working`` or ``claimed``."""
    worker: str | None


@dataclass
class Plan:
    """What adopting the file does, computed from its rows (nothing written)."""

    path: str
    counts: dict[str, int] = field(default_factory=dict)
    """Tasks per Task Coordinator status."""
    reopened: list[Reopened] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    """Tasks not done whose dependencies bridge refuses (unknown id, cycle, malformed
    JSON): kept, and held back for good (``pending_deps`` one above their edges)."""
    irregular_done: list[Blocked] = field(default_factory=list)
    """Done tasks whose dependencies bridge refuses: kept as stored (they never run)."""
    edges: int = 0
    slots: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Adoption(Plan):
    kind: str = ""
    copy: str = ""
    """The copy of the file as it was, beside it."""


# ------------------------------------------------------------------------------ checks


def sqlite_file(url: str) -> str:
    """The file a SQLite URL names; adoption works on SQLite files only."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(f"not a database URL: {redact_url(url)}") from None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite":
        raise StoreError(
            f"bridge db adopt works on a SQLite file, not {redact_url(url)}"
            " (adopt the file first, then move its tasks)"
        )
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StoreError("bridge db adopt works on a SQLite file (sqlite:///path/to/file.db)")
    return database


def _shown(path: str) -> str:
    return path if os.path.isabs(path) or path.startswith(".") else os.path.join(".", path)


def _check_file(path: str) -> None:
    """Refuse before opening anything: missing, not a file, empty, not SQLite, not writable."""
    shown = _shown(path)
    if not os.path.exists(path):
        raise StoreError(f"cannot adopt {shown}: no such file")
    if not os.path.isfile(path):
        raise StoreError(f"cannot adopt {shown}: not a file")
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot adopt {shown}: the file is not readable")
    with open(path, "rb") as handle:
        header = handle.read(16)
    if not header:
        raise StoreError(
            f"cannot adopt {shown}: the file is empty, not a Task Coordinator database"
        )
    if header != b"SQLite format 3\x00":
        raise StoreError(f"cannot adopt {shown}: not a SQLite database")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot adopt {shown}: its folder {folder} is not writable (the copy goes beside it)"
        )
    if not os.access(path, os.W_OK):
        raise StoreError(f"cannot adopt {shown}: the file is not writable")


def _schema(conn: sqlite3.Connection, path: str) -> None:
    """Refuse anything but a Task Coordinator file (bridge's own included)."""
    shown = _shown(path)
    objects = conn.execute(
        "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    tables = {name for kind, name, _ in objects if kind == "table"}
    if not tables:
        raise StoreError(f"cannot adopt {shown}: the database is empty (no tables)")
    columns = {
        t: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({_quoted(t)})")) for t in tables
    }
    if "tasks" in tables and "kind" in columns["tasks"]:
        raise StoreError(f"cannot adopt {shown}: it is already a bridge database")
    if columns.get("tasks") != TC_TASK_COLUMNS or columns.get("worker_slots") != TC_SLOT_COLUMNS:
        raise StoreError(
            f"cannot adopt {shown}: not a Task Coordinator database"
            " (it has no 'tasks' and 'worker_slots' tables of that schema)"
        )
    for extra in sorted(tables - {"tasks", "worker_slots"}):
        if extra not in BRIDGE_TABLES or conn.execute(f"SELECT 1 FROM {_quoted(extra)}").fetchone():
            raise StoreError(
                f"cannot adopt {shown}: it holds a table {extra!r} the Task Coordinator never made"
            )
    others = sorted(f"{kind} {name!r}" for kind, name, _ in objects if kind in ("view", "trigger"))
    if others:
        raise StoreError(
            f"cannot adopt {shown}: it holds {others[0]}, which the Task Coordinator never made"
        )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that leaves no trace: ``mode=ro`` when a WAL is there to be read,
    else ``immutable=1``, so a WAL-mode file (bridge's own) gets no ``-wal``/``-shm``
    created beside it just for being looked at. What it reads is read again under the
    write lock before anything is changed."""
    absolute = os.path.abspath(path)
    options = "mode=ro" if os.path.exists(f"{absolute}-wal") else "mode=ro&immutable=1"
    return sqlite3.connect(
        f"file:{quote(absolute)}?{options}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
    )


def _database_error(path: str, exc: sqlite3.Error) -> StoreError:
    message = str(exc).replace("\n", " ")
    if "not a database" in message or "malformed" in message:
        return StoreError(f"cannot adopt {_shown(path)}: the file is corrupt ({message})")
    return StoreError(f"cannot adopt {_shown(path)}: {message}")


def _check_integrity(conn: sqlite3.Connection, path: str) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StoreError(f"cannot adopt {_shown(path)}: the file is corrupt ({problems[0]})")


# ------------------------------------------------------------------------------ the plan


@dataclass
class _Row:
    rowid: int
    id: str
    status: str
    worker: str | None
    deps: list[str] | None
    """Declared dependencies, distinct, in order; None when the JSON is unusable."""
    problem: str | None
    created_at: Any
    description: Any


def _declared(raw: Any) -> tuple[list[str] | None, str | None]:
    """The dependency ids a ``dependencies`` value declares, or why it declares none usably."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return [], None
    if not isinstance(raw, str):
        return None, f"dependencies are not JSON text ({_clip(repr(raw))})"
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return None, f"dependencies are not valid JSON ({_clip(raw)})"
    if value is None:
        return [], None
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        return None, f"dependencies are not a JSON list of task ids ({_clip(raw)})"
    return list(dict.fromkeys(value)), None


def _clip(text: str, width: int = 60) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def _read_rows(conn: sqlite3.Connection, path: str) -> list[_Row]:
    rows = []
    for rowid, task_id, status, worker, deps, created_at, description in conn.execute(
        "SELECT rowid, id, status, worker, dependencies, created_at, description FROM tasks"
    ):
        if not isinstance(task_id, str) or not task_id:
            raise StoreError(
                f"cannot adopt {_shown(path)}: task at rowid {rowid} has no usable id ({task_id!r})"
            )
        if status not in TC_STATUSES:
            raise StoreError(
                f"cannot adopt {_shown(path)}: task {task_id!r} has status {status!r},"
                " which the Task Coordinator never writes"
            )
        declared, problem = _declared(deps)
        rows.append(
            _Row(rowid, task_id, status, worker, declared, problem, created_at, description)
        )
    return rows


def _on_cycles(graph: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each task on a dependency cycle, with the tasks of its cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: dict[str, list[str]] = {}
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    component.reverse()
                    for member in component:
                        result[member] = component
    return result


@dataclass
class _Decided:
    plan: Plan
    rows: list[_Row]
    reasons: dict[str, str]
    edges: list[tuple[str, str]]


def _decide(rows: list[_Row], path: str) -> _Decided:
    """Edges, cycles and the reason each irregular task is held back."""
    known = {row.id for row in rows}
    graph = {row.id: [d for d in (row.deps or []) if d in known] for row in rows}
    cycles = _on_cycles(graph)
    plan = Plan(path=path)
    reasons: dict[str, str] = {}
    for row in rows:
        plan.counts[row.status] = plan.counts.get(row.status, 0) + 1
        if row.status in REOPENED:
            plan.reopened.append(Reopened(row.id, row.status, row.worker))
        why = [row.problem] if row.problem else []
        unknown = [d for d in (row.deps or []) if d not in known]
        if unknown:
            why.append(f"depends on unknown task(s) {_names(unknown)}")
        if row.id in cycles:
            why.append(f"on a dependency cycle among {_names(cycles[row.id])}")
        if why:
            reasons[row.id] = "; ".join(why)
            kept = plan.irregular_done if row.status == "done" else plan.blocked
            kept.append(Blocked(row.id, row.status, reasons[row.id]))
    edges = [(task, dep) for task, deps in graph.items() for dep in deps]
    plan.edges = len(edges)
    return _Decided(plan, rows, reasons, edges)


def plan_adoption(path: str) -> Plan:
    """Read the file (never writing it) and say what adopting it would do."""
    _check_file(path)
    try:
        with closing(_connect_read_only(path)) as conn:
            _schema(conn, path)
            _check_integrity(conn, path)
            decided = _decide(_read_rows(conn, path), path)
            decided.plan.slots = conn.execute("SELECT count(*) FROM worker_slots").fetchone()[0]
    except sqlite3.Error as exc:
        raise _database_error(path, exc) from None
    return decided.plan


# ------------------------------------------------------------------------------ adopting


def copy_name(path: str, moment: datetime) -> str:
    """``<name>.before-bridge-<UTC time>``, beside the file; never an existing name."""
    base = f"{path}.before-bridge-{moment.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"
    candidate, n = base, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{base}.{n}"
    return candidate


def _backup(path: str, copy: str) -> None:
    """A consistent copy through SQLite's backup API, on disk before the conversion starts.

    It reads through its own connection: the caller holds the write lock (no one can
    change the file meanwhile), and a backup read through the writing connection
    would wait for that connection forever.
    """
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    with (
        closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)) as source,
        closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    with open(copy, "rb") as handle:
        os.fsync(handle.fileno())


def adopt(path: str, kind: str, *, moment: datetime | None = None) -> Adoption:
    """Copy the file beside itself, then convert it in place in one transaction.

    On any failure the transaction is rolled back (the file is as it was) and the copy
    is deleted. The file is checked again under the write lock, so what is converted is
    exactly what was copied.
    """
    if not kind or not kind.strip():
        raise StoreError("--kind must name a handler (e.g. --kind agent)")
    _check_file(path)
    try:
        with closing(_connect_read_only(path)) as looked_at:
            _schema(looked_at, path)  # refuse before a writing connection touches the file
    except sqlite3.Error as exc:
        raise _database_error(path, exc) from None
    moment = moment or datetime.now(timezone.utc)
    copy: str | None = None
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise _database_error(path, exc) from None
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        _schema(conn, path)
        _check_integrity(conn, path)
        decided = _decide(_read_rows(conn, path), path)
        copy = copy_name(path, moment)
        _backup(path, copy)
        slots = _convert(conn, decided, kind)
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise StoreError(
                f"cannot adopt {_shown(path)}: foreign key check failed: {problems[0]}"
            )
        conn.execute("COMMIT")
    except BaseException as exc:
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        conn.close()
        if copy is not None:
            for leftover in (copy, f"{copy}-journal", f"{copy}-wal", f"{copy}-shm"):
                with suppress(FileNotFoundError):
                    os.remove(leftover)
        if isinstance(exc, sqlite3.Error):
            raise _database_error(path, exc) from None
        raise
    conn.close()
    plan = decided.plan
    plan.slots = slots
    return Adoption(
        path=path,
        counts=plan.counts,
        reopened=plan.reopened,
        blocked=plan.blocked,
        irregular_done=plan.irregular_done,
        edges=plan.edges,
        slots=slots,
        kind=kind,
        copy=copy,
    )


def _payload(task_id: str, description: Any) -> str:
    """What the handler gets: the Task Coordinator told its workers what to do in the
    description, so the id and description are the adopted task's payload."""
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    return json.dumps({"id": task_id, "description": description}, ensure_ascii=False)


def _convert(conn: sqlite3.Connection, decided: _Decided, kind: str) -> int:
    """Rebuild ``tasks`` and ``worker_slots`` in the 0.1.0 shape and add bridge's tables.

    The old tables are renamed out of the way, the new ones made with the frozen DDL
    (so ``sqlite_master`` reads exactly as 0.1.0 wrote it), the rows copied by
    ``INSERT ... SELECT`` (every stored value and its type kept), the old tables dropped.
    Returns the number of slot rows.
    """
    at = now()
    for table in BRIDGE_TABLES:  # empty leftovers of an older bridge (checked by _schema)
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    conn.execute('ALTER TABLE tasks RENAME TO "_tc_tasks_adopting"')
    conn.execute('ALTER TABLE worker_slots RENAME TO "_tc_worker_slots_adopting"')
    for ddl in SCHEMA_0_1_0:
        conn.execute(ddl)

    status = {row.id: row.status for row in decided.rows}
    order = sorted(decided.rows, key=lambda r: (r.created_at is not None, _sortable(r), r.rowid))
    seq = {row.rowid: n for n, row in enumerate(order, start=1)}
    conn.execute(
        "CREATE TEMP TABLE _adopt_plan (rid INTEGER PRIMARY KEY, status TEXT, payload TEXT,"
        " attempts INTEGER, failures INTEGER, pending_deps INTEGER, seq INTEGER, note TEXT)"
    )
    plan_rows = []
    for row in decided.rows:
        waiting = sum(1 for d in row.deps or [] if d in status and status[d] != "done")
        reason = decided.reasons.get(row.id)
        held = reason is not None and row.status != "done"
        plan_rows.append(
            (
                row.rowid,
                "available" if row.status in REOPENED else row.status,
                _payload(row.id, row.description),
                1 if row.status in ("working", "done", "failed") else 0,
                1 if row.status == "failed" else 0,
                waiting + (1 if held else 0),
                seq[row.rowid],
                BLOCKED_PREFIX + reason if held else None,
            )
        )
    conn.executemany("INSERT INTO _adopt_plan VALUES (?, ?, ?, ?, ?, ?, ?, ?)", plan_rows)
    conn.execute(
        "INSERT INTO tasks (id, description, status, worker, dependencies, output, error,"
        " started_at, completed_at, created_at, kind, payload, priority, attempts,"
        " max_attempts, failures, timeout, pending_deps, seq, job_id, queued_at, not_before,"
        " updated_at, note)"
        " SELECT o.id, o.description, p.status, o.worker, o.dependencies, o.output, o.error,"
        " o.started_at, o.completed_at, o.created_at, :kind, p.payload, 0, p.attempts,"
        " 1, p.failures, NULL, p.pending_deps, p.seq, NULL, NULL, NULL, :at, p.note"
        ' FROM "_tc_tasks_adopting" o JOIN _adopt_plan p ON p.rid = o.rowid',
        {"kind": kind, "at": at},
    )
    conn.execute("DROP TABLE _adopt_plan")
    conn.execute('DROP TABLE "_tc_tasks_adopting"')
    conn.executemany("INSERT INTO task_edges (task_id, depends_on) VALUES (?, ?)", decided.edges)
    conn.executemany(
        "INSERT INTO task_events (task_id, from_status, to_status, attempt, worker, at, detail)"
        " VALUES (?, ?, ?, 0, ?, ?, ?)",
        (_event(row, kind, decided.reasons.get(row.id), at) for row in decided.rows),
    )
    conn.execute(
        "INSERT INTO worker_slots (slot, worker_id, active, task_id, updated_at)"
        ' SELECT slot, NULL, 0, NULL, ? FROM "_tc_worker_slots_adopting"',
        (at,),
    )
    conn.execute('DROP TABLE "_tc_worker_slots_adopting"')
    return conn.execute("SELECT count(*) FROM worker_slots").fetchone()[0]


def _sortable(row: _Row) -> str:
    return "" if row.created_at is None else str(row.created_at)


def _event(
    row: _Row, kind: str, reason: str | None, at: str
) -> tuple[str, str, str, str | None, str, str]:
    """The adoption's line in each task's history (from its Task Coordinator status)."""
    detail = f"adopted from the Task Coordinator as kind {kind!r}"
    worker = None
    target = row.status
    if row.status in REOPENED:
        target = "available"
        worker = row.worker
        detail += (
            f"; it was {row.status} on worker {row.worker or '(none recorded)'} there"
            " and runs again (at-least-once)"
        )
    if reason is not None:
        detail += ("; kept as declared: " if row.status == "done" else "; blocked: ") + reason
    return (row.id, row.status, target, worker, at, detail)
