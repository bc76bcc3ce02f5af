"""``bridge db backup`` / ``bridge db restore``: portable across backends, all or nothing.

Every case drives the real CLI. A refused restore leaves the target exactly as it was
(every row of every table compared, and a SQLite file byte for byte); a refused backup
leaves no file behind.
"""

import gzip
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from backup_helpers import canonical, fill_every_state, lines, write_lines
from helpers import bridge, file_digest, query

from bridge import graph, store
from bridge.store.archive import dump
from bridge.store.backup import backup
from bridge.store.pools import set_pool

NO_REDIS = "redis://127.0.0.1:1/0"
"""Backup and restore need no Redis (a merge's wake-up nudge fails quietly)."""


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "BRIDGE_DATABASE_URL": url, "BRIDGE_REDIS_URL": NO_REDIS}


def one_error_line(result) -> str:
    assert result.returncode != 0, result.stdout
    lines_ = result.stderr.strip().splitlines()
    assert len(lines_) == 1 and lines_[0].startswith("error: "), result.stderr
    return lines_[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database with tasks in every state (tests only read it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'source.db'}"
    fill_every_state(url)
    return url


@pytest.fixture(scope="module")
def made_backup(tmp_path_factory: pytest.TempPathFactory, source: str) -> Path:
    """A backup of ``source`` through the real CLI, made once."""
    path = tmp_path_factory.mktemp("backup") / "snap.bridge.gz"
    result = bridge("db", "backup", str(path), env=env_for(source))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"backed up to {path}: 8 tasks, 3 task_edges,")
    return path


@pytest.fixture
def backup_file(tmp_path: Path, made_backup: Path) -> Path:
    """This test's own copy of the backup (it may spoil it)."""
    path = tmp_path / made_backup.name
    shutil.copyfile(made_backup, path)
    return path


def empty_database(url: str) -> str:
    store.open_engine(url).dispose()
    return url


# ------------------------------------------------------------------------------ round trip


def test_backup_prints_counts_and_writes_the_documented_format(backup_file, source):
    items = lines(backup_file)
    header, rows, trailer = items[0], items[1:-1], items[-1]
    assert header["format"] == "bridge-backup" and header["version"] == 1
    assert header["schema"]  # a revision, or "unversioned" before migrations
    assert header["counts"] == {t: len(r) for t, r in canonical(source).items() if t != "leases"}
    assert {r["table"] for r in rows} == set(header["counts"]) - {
        t for t, n in header["counts"].items() if n == 0
    }
    assert "leases" not in {r["table"] for r in rows}
    assert trailer["end"] is True and len(trailer["sha256"]) == 64
    # Values as stored: text stays text
    task = next(r["row"] for r in rows if r["table"] == "tasks" and r["row"]["id"] == "queued")
    assert task["payload"] == json.dumps({"n": 1, "s": "x\ty"})


def test_sqlite_to_postgres_to_sqlite_keeps_every_row(tmp_path, source, backup_file, pg_url):
    # Given a SQLite backup restored into an empty PostgreSQL database
    restored = bridge("db", "restore", str(backup_file), env=env_for(pg_url))
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout and "8 tasks" in restored.stdout
    # When PostgreSQL is backed up and restored into a new SQLite file
    second = tmp_path / "from-postgres.gz"
    assert bridge("db", "backup", str(second), env=env_for(pg_url)).returncode == 0
    back = f"sqlite:///{tmp_path / 'back.db'}"
    again = bridge("db", "restore", str(second), env=env_for(back))
    assert again.returncode == 0, again.stderr
    # Then every row of every table is the same in all three
    assert canonical(pg_url) == canonical(source)
    assert canonical(back) == canonical(source)
    # And the PostgreSQL database goes on: new events get ids past the restored ones
    added = bridge("add", "new-task", env=env_for(pg_url))
    assert added.returncode == 0, added.stderr
    events = canonical(pg_url)["task_events"]
    assert len(events) == len(canonical(source)["task_events"]) + 1


def test_restore_keeps_the_identity_and_the_next_token(tmp_path, source, backup_file):
    target = empty_database(f"sqlite:///{tmp_path / 'target.db'}")
    assert bridge("db", "restore", str(backup_file), env=env_for(target)).returncode == 0
    assert canonical(target)["bridge_meta"] == canonical(source)["bridge_meta"]


# ------------------------------------------------------------------------------ bad input


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _altered(path: Path) -> None:
    items = lines(path)
    items[1]["row"]["description"] = "changed"
    write_lines(path, items)


def _no_end_line(path: Path) -> None:
    write_lines(path, lines(path)[:-1])


def _newer_format(path: Path) -> None:
    items = lines(path)
    items[0]["version"] = 2
    write_lines(path, items)


def _not_gzip(path: Path) -> None:
    path.write_text("id,description\na,b\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _unknown_column(path: Path) -> None:
    items = lines(path)
    items[1]["row"]["colour"] = "red"
    write_lines(path, items)


def _line_after_end(path: Path) -> None:
    items = lines(path)
    write_lines(path, [*items, items[1]])


def _counts_disagree(path: Path) -> None:
    """A header that lies about its counts, with a checksum made to match."""
    items = lines(path)
    items[0]["counts"]["tasks"] += 1
    body = [
        (json.dumps(i, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        for i in items[:-1]
    ]
    trailer = {"end": True, "sha256": hashlib.sha256(b"".join(body)).hexdigest()}
    write_lines(path, [], raw=[*body, (json.dumps(trailer) + "\n").encode()])


BAD_FILES = {
    "line after end": (_line_after_end, "after its end line"),
    "counts disagree": (_counts_disagree, "header counts"),
    "truncated": (_truncated, "truncated"),
    "altered": (_altered, "checksum mismatch"),
    "no end line": (_no_end_line, "truncated"),
    "newer format": (_newer_format, "newer bridge"),
    "not gzip": (_not_gzip, "not a bridge backup"),
    "empty file": (_empty, "not a bridge backup"),
    "unknown column": (_unknown_column, "'colour'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_refused_and_the_target_is_unchanged(tmp_path, backup_file, case):
    # Given a damaged backup and an empty target database
    spoil, expected = BAD_FILES[case]
    spoil(backup_file)
    target_path = tmp_path / "target.db"
    target = empty_database(f"sqlite:///{target_path}")
    before, digest = canonical(target), file_digest(target_path)
    # When it is restored
    result = bridge("db", "restore", str(backup_file), env=env_for(target))
    # Then one error line names the problem and the target is as it was
    assert expected in one_error_line(result)
    assert canonical(target) == before
    assert file_digest(target_path) == digest


def test_a_missing_file_is_refused_and_no_database_is_created(tmp_path):
    target_path = tmp_path / "never.db"
    result = bridge(
        "db", "restore", str(tmp_path / "nope.gz"), env=env_for(f"sqlite:///{target_path}")
    )
    assert "no backup file at" in one_error_line(result)
    assert not target_path.exists()


def test_a_non_empty_target_is_refused_without_replace(tmp_path, source, backup_file):
    target_path = tmp_path / "busy.db"
    target = f"sqlite:///{target_path}"
    fill_every_state(target, prefix="other-")
    before, digest = canonical(target), file_digest(target_path)
    result = bridge("db", "restore", str(backup_file), env=env_for(target))
    assert "is not empty" in one_error_line(result)
    assert "--replace --yes" in result.stderr
    not_confirmed = bridge("db", "restore", str(backup_file), "--replace", env=env_for(target))
    assert "--yes" in one_error_line(not_confirmed)
    assert canonical(target) == before and file_digest(target_path) == digest


def test_a_target_that_cannot_be_written_is_refused(tmp_path, backup_file):
    missing_folder = f"sqlite:///{tmp_path / 'no-such-folder' / 'target.db'}"
    result = bridge("db", "restore", str(backup_file), env=env_for(missing_folder))
    assert "does not exist" in one_error_line(result)
    assert not (tmp_path / "no-such-folder").exists()


def test_a_read_only_postgres_target_is_refused_and_unchanged(backup_file, pg_url):
    # Given an empty PostgreSQL database that this connection may only read (a standby's view)
    empty_database(pg_url)
    before = canonical(pg_url)
    read_only = pg_url + "?options=-c%20default_transaction_read_only%3Don"
    # When a backup is restored into it
    result = bridge("db", "restore", str(backup_file), env=env_for(read_only))
    # Then one line says why, without a password, and nothing was written
    assert "read-only" in one_error_line(result)
    assert canonical(pg_url) == before


@pytest.mark.parametrize("where", ["missing folder", "a directory", "under a file"])
def test_a_backup_that_cannot_be_written_leaves_no_file(tmp_path, source, where):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    path = {
        "missing folder": tmp_path / "missing" / "b.gz",
        "a directory": tmp_path / "a-dir",
        "under a file": tmp_path / "a-file" / "b.gz",
    }[where]
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    result = bridge("db", "backup", str(path), env=env_for(source))
    assert "cannot write backup" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


def test_a_write_failing_half_way_leaves_no_partial_file(tmp_path, source, monkeypatch):
    # Given a disk that fills up after a few lines
    from bridge.store import archive

    written = []
    real_write = archive._LineWriter.write

    def failing_write(self, item):
        if len(written) >= 5:
            raise OSError(28, "No space left on device")
        written.append(item)
        real_write(self, item)

    monkeypatch.setattr(archive._LineWriter, "write", failing_write)
    engine = store.open_engine(source)
    try:
        with store.reading(engine) as session:
            with pytest.raises(store.StoreError, match="No space left on device"):
                dump(session, tmp_path / "full.gz")
    finally:
        engine.dispose()
    assert not [p for p in tmp_path.iterdir() if "full" in p.name]


# ------------------------------------------------------------------------------ replace, merge


def test_restore_refuses_a_database_a_dispatcher_runs_on(tmp_path, source, backup_file):
    # Given a target whose dispatcher holds its lease
    target_path = tmp_path / "served.db"
    target = f"sqlite:///{target_path}"
    fill_every_state(target, prefix="other-")
    query(
        target_path,
        "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES (?, ?, ?, ?)",
        "dispatcher",
        "host-1-42",
        time.time() + 600,
        time.time(),
    )
    before = canonical(target)
    # When it is replaced
    result = bridge("db", "restore", str(backup_file), "--replace", "--yes", env=env_for(target))
    # Then it is refused: the dispatcher would go on under the old identity
    assert "dispatcher host-1-42 is running" in one_error_line(result)
    assert canonical(target) == before


def test_replace_yes_replaces_every_row(tmp_path, source, backup_file):
    target = f"sqlite:///{tmp_path / 'busy.db'}"
    fill_every_state(target, prefix="other-")
    result = bridge("db", "restore", str(backup_file), "--replace", "--yes", env=env_for(target))
    assert result.returncode == 0, result.stderr
    assert canonical(target) == canonical(source)


def _two_graphs(url: str) -> None:
    engine = store.open_engine(url)
    try:
        with store.writing(engine) as session:
            store.add_tasks(
                session=session,
                specs=[
                    graph.make_spec(task_id="old-1"),
                    graph.make_spec(task_id="old-2", dependencies=["old-1"]),
                    graph.make_spec(task_id="keep", dependencies=["old-2"]),
                    graph.make_spec(task_id="other"),
                ],
            )
    finally:
        engine.dispose()


def test_dump_of_some_tasks_holds_their_rows_edges_between_them_and_events(tmp_path, source):
    # Given a database with a graph, and an archive of part of it
    url = f"sqlite:///{tmp_path / 'live.db'}"
    _two_graphs(url)
    engine = store.open_engine(url)
    try:
        with store.reading(engine) as session:
            counts = dump(session, tmp_path / "part.gz", task_ids=["old-1", "old-2", "missing"])
    finally:
        engine.dispose()
    items = lines(tmp_path / "part.gz")
    # Then only those tasks, the edge between them (not the one to ``keep``), their events,
    # and the database's facts are in it; no slots
    rows = [(i["table"], i["row"]) for i in items[1:-1]]
    assert sorted(r["id"] for t, r in rows if t == "tasks") == ["old-1", "old-2"]
    assert [(r["task_id"], r["depends_on"]) for t, r in rows if t == "task_edges"] == [
        ("old-2", "old-1")
    ]
    assert {r["task_id"] for t, r in rows if t == "task_events"} == {"old-1", "old-2"}
    assert {r["key"] for t, r in rows if t == "bridge_meta"} == {"identity", "next_token"}
    assert (
        counts
        == items[0]["counts"]
        == {
            "tasks": 2,
            "task_edges": 1,
            "task_events": 2,
            "task_logs": 0,
            "worker_slots": 0,
            "runs": 0,
            "pools": 0,
            "schedules": 0,
            "bridge_meta": 2,
        }
    )
    assert items[0]["partial"] is True


def test_merge_brings_an_archive_back_into_a_live_database(tmp_path, source):
    # Given an archive of every task of one database (tokens used up to some number)
    archive_path = tmp_path / "archive.gz"
    engine = store.open_engine(source)
    try:
        with store.reading(engine) as session:
            ids = list(canonical(source)["tasks"])
            dump(session, archive_path, task_ids=[dict(t)["id"] for t in ids])
    finally:
        engine.dispose()
    # And a live database with other tasks and its own identity
    live = f"sqlite:///{tmp_path / 'live.db'}"
    _two_graphs(live)
    before = canonical(live)
    # When the archive is merged into it
    result = bridge("db", "restore", str(archive_path), "--merge", env=env_for(live))
    assert result.returncode == 0, result.stderr
    assert "merged" in result.stdout
    after = canonical(live)
    # Then its tasks, edges and events are added (events get new ids), nothing else changes
    src = canonical(source)
    assert set(after["tasks"]) == set(before["tasks"]) | set(src["tasks"])
    assert set(after["task_edges"]) == set(before["task_edges"]) | set(src["task_edges"])
    strip = lambda rows: sorted((tuple(c for c in r if c[0] != "id") for r in rows), key=repr)  # noqa: E731
    assert strip(after["task_events"]) == sorted(
        strip(before["task_events"]) + strip(src["task_events"]), key=repr
    )
    assert after["worker_slots"] == before["worker_slots"]
    # And the live identity stays, the next token is the larger of the two
    meta = dict(dict(r)["key"] and (dict(r)["key"], dict(r)["value"]) for r in after["bridge_meta"])
    live_meta = dict((dict(r)["key"], dict(r)["value"]) for r in before["bridge_meta"])
    src_meta = dict((dict(r)["key"], dict(r)["value"]) for r in src["bridge_meta"])
    assert meta["identity"] == live_meta["identity"] != src_meta["identity"]
    assert int(meta["next_token"]) == max(int(live_meta["next_token"]), int(src_meta["next_token"]))
    # When it is merged again
    refused = bridge("db", "restore", str(archive_path), "--merge", env=env_for(live))
    # Then it is refused whole, naming a few of the ids already there
    line = one_error_line(refused)
    assert "already there" in line and "'cancelled'" in line and "more" in line
    assert canonical(live) == after


def test_merge_of_a_full_backup_adds_missing_runs_pools_schedules_and_keeps_live_ones(
    tmp_path, backup_file
):
    # Given a live database with its own pool ``gpu`` (3 slots) and tasks of other ids
    live = f"sqlite:///{tmp_path / 'live.db'}"
    fill_every_state(live, prefix="live-")
    engine = store.open_engine(live)
    try:
        with store.writing(engine) as session:
            set_pool(session=session, name="gpu", slots=3)
    finally:
        engine.dispose()
    # When a full backup (pool gpu of 2 slots, run nightly, schedule hourly) is merged in
    result = bridge("db", "restore", str(backup_file), "--merge", env=env_for(live))
    assert result.returncode == 0, result.stderr
    # Then the names the live database lacked are added, its own pool keeps its size,
    # and the logs came with their tasks (with ids of the live database's own)
    assert dict(query(live, "SELECT name, slots FROM pools")) == {"gpu": 3, "live-gpu": 2}
    assert {r[0] for r in query(live, "SELECT name FROM runs")} >= {"nightly", "live-nightly"}
    assert {r[0] for r in query(live, "SELECT name FROM schedules")} == {"hourly", "live-hourly"}
    assert sorted(r[0] for r in query(live, "SELECT task_id FROM task_logs")) == [
        "live-working",
        "working",
    ]


def test_merge_and_replace_do_not_go_together(tmp_path, backup_file):
    target = f"sqlite:///{tmp_path / 't.db'}"
    result = bridge(
        "db", "restore", str(backup_file), "--merge", "--replace", "--yes", env=env_for(target)
    )
    assert "cannot be used together" in one_error_line(result)


def test_backup_reads_in_chunks(tmp_path, monkeypatch):
    """More rows than one read holds still come out whole and in order (keyset paging)."""
    from bridge.store import archive

    monkeypatch.setattr(archive, "READ_CHUNK", 3)
    url = f"sqlite:///{tmp_path / 'many.db'}"
    engine = store.open_engine(url)
    try:
        with store.writing(engine) as session:
            store.add_tasks(
                session=session,
                specs=[
                    graph.make_spec(
                        task_id=f"t{n:02}", dependencies=[f"t{m:02}" for m in range(n % 4)]
                    )
                    for n in range(10)
                ],
            )
        backup(engine, tmp_path / "many.gz")
    finally:
        engine.dispose()
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    assert bridge("db", "restore", str(tmp_path / "many.gz"), env=env_for(target)).returncode == 0
    assert canonical(target) == canonical(url)
    assert gzip.open(tmp_path / "many.gz").read().count(b'"table":"task_edges"') == 13


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_backup_is_one_moment_even_while_others_write(tmp_path, monkeypatch, backend, request):
    """Rows committed by others while a backup reads are not in it, on either backend."""
    from sqlalchemy import text as sql

    from bridge.store import archive

    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'busy.db'}"
    )
    fill_every_state(url)
    expected = canonical(url)
    engine = store.open_engine(url)
    real_counts = archive._counts

    def counts_then_someone_writes(conn, ids):
        counts = real_counts(conn, ids)  # the snapshot has begun
        with store.writing(engine) as session:  # another transaction, committed meanwhile
            store.add_tasks(session=session, specs=[graph.make_spec(task_id="late")])
            session.connection().execute(sql("UPDATE tasks SET description = 'changed'"))
        return counts

    monkeypatch.setattr(archive, "_counts", counts_then_someone_writes)
    monkeypatch.setattr(archive, "READ_CHUNK", 2)
    try:
        backup(engine, tmp_path / "moment.gz")
    finally:
        engine.dispose()
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    assert bridge("db", "restore", str(tmp_path / "moment.gz"), env=env_for(target)).returncode == 0
    assert canonical(target) == expected
    assert canonical(url) != expected  # the writes did happen
