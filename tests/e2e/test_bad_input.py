"""End to end: every bad input the CLI can be given ends as one ``error:`` line.

Each case runs the real ``bridge`` command against a database holding a few
tasks and checks the contract from the issue: a non-zero exit, exactly one
line ``error: ...`` on stderr (no traceback), and the database file left
byte for byte as it was.
"""

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import bridge, file_digest, query

from bridge import graph, store

REDIS_PASSWORD = "s3cret"


@pytest.fixture
def seeded(db_path: Path, db_url: str) -> str:
    """A database with ``a`` (available), ``b`` (after ``a``), ``d`` (done) and
    ``c`` (cancelled); returns its digest. Built in-process: no CLI run needed."""
    engine = store.open_engine(db_url)
    try:
        with store.writing(engine) as session:
            store.add_tasks(
                session=session,
                specs=[
                    graph.make_spec(task_id="a"),
                    graph.make_spec(task_id="b", dependencies=["a"]),
                    graph.make_spec(task_id="d"),
                    graph.make_spec(task_id="c"),
                ],
            )
    finally:
        engine.dispose()
    query(db_path, "UPDATE tasks SET status = 'done' WHERE id = 'd'")
    query(db_path, "UPDATE tasks SET status = 'cancelled' WHERE id = 'c'")
    # Fold the WAL into the main file now, or the first CLI run would do it and
    # change the bytes without writing anything.
    assert query(db_path, "PRAGMA wal_checkpoint(TRUNCATE)")[0][0] == 0
    assert dict(query(db_path, "SELECT id, status FROM tasks")) == {
        "a": "available",
        "b": "available",
        "d": "done",
        "c": "cancelled",
    }
    return file_digest(db_path)


def assert_one_error_line(result: Any, *words: str) -> str:
    """The CLI contract for a user error; returns the error line."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


GRAPH = "graph.json"


def case(args: list[str], words: list[str], file: Any = None, **kwargs: Any) -> Any:
    """``file``: what to write to graph.json first (a str as is, anything else as JSON)."""
    return pytest.param(args, file, words, **kwargs)


CASES = [
    # duplicate ids
    case(["add", "a"], ["task 'a' already exists"], id="duplicate-of-stored"),
    case(
        ["add", "--file", GRAPH],
        ["duplicate task id 'n'"],
        [{"id": "n"}, {"id": "n", "description": "again"}],
        id="duplicate-in-file",
    ),
    case(
        ["run", GRAPH],
        ["duplicate", "'d'"],
        [{"id": "d"}, {"id": "d"}],
        id="run-duplicate-of-stored-same-definition",
    ),
    # unknown dependencies
    case(
        ["add", "x", "--after", "zz"], ["task 'x' depends on unknown task 'zz'"], id="unknown-dep"
    ),
    case(
        ["add", "--file", GRAPH],
        ["task 'y' depends on unknown task 'zz'"],
        [{"id": "x", "dependencies": ["a"]}, {"id": "y", "dependencies": ["x", "zz"]}],
        id="unknown-dep-in-file",
    ),
    # cycles
    case(["add", "s", "--after", "s"], ["task 's' depends on itself"], id="self-dep"),
    case(
        ["add", "--file", GRAPH],
        ["task 's' depends on itself"],
        [{"id": "r"}, {"id": "s", "dependencies": ["r", "s"]}],
        id="self-dep-in-file",
    ),
    case(
        ["add", "--file", GRAPH],
        ["dependency cycle", "'x'", "'y'"],
        [{"id": "x", "dependencies": ["y"]}, {"id": "y", "dependencies": ["x"]}],
        id="cycle-of-two-in-file",
    ),
    case(
        ["add", "--file", GRAPH],
        ["dependency cycle", "'p'", "'q'", "'r'"],
        [
            {"id": "o", "dependencies": ["a"]},
            {"id": "p", "dependencies": ["o", "r"]},
            {"id": "q", "dependencies": ["p", "b"]},
            {"id": "r", "dependencies": ["q"]},
        ],
        id="cycle-of-three-in-file-on-stored-tasks",
    ),
    case(
        # stored b is after a; redeclaring a after a new n (after b) closes a -> n -> b -> a
        ["add", "--file", GRAPH],
        ["task 'a' already exists"],
        [{"id": "n", "dependencies": ["b"]}, {"id": "a", "dependencies": ["n"]}],
        id="cycle-closed-through-stored-task",
    ),
    case(
        ["run", GRAPH],
        ["task 'a' already exists with a different definition"],
        [{"id": "n", "dependencies": ["b"]}, {"id": "a", "dependencies": ["n"]}],
        id="run-cycle-closed-through-stored-task",
    ),
    case(
        ["run", GRAPH],
        ["dependency cycle", "'x'", "'y'"],
        [{"id": "x", "dependencies": ["y"]}, {"id": "y", "dependencies": ["x"]}],
        id="run-cycle-in-file",
    ),
    # malformed JSON
    case(["add", "x", "--payload", "{bad"], ["--payload is not valid JSON"], id="payload-json"),
    case(["add", "--file", GRAPH], [GRAPH, "not valid JSON"], '[{"id": "x",]', id="file-json"),
    case(
        ["add", "x", "--payload", '{"s": "\\ud800"}'],
        ["payload"],
        id="payload-lone-surrogate",
    ),
    case(
        ["add", "--file", GRAPH],
        [GRAPH],
        '[{"id": "\\ud800"}]',
        id="file-lone-surrogate",
    ),
    case(
        ["add", "--file", GRAPH],
        [GRAPH],
        "[" * 100_000 + "]" * 100_000,
        id="file-nested-too-deep",
    ),
    # not a list of objects
    case(["add", "--file", GRAPH], ["must hold a JSON list"], {"id": "x"}, id="file-object"),
    case(["add", "--file", GRAPH], [GRAPH, "has no tasks"], [], id="file-empty"),
    case(
        ["add", "--file", GRAPH],
        ["item 1 is not an object"],
        [{"id": "x"}, "y"],
        id="file-list-of-non-objects",
    ),
    # empty ids
    case(["add", ""], ["task id must not be empty"], id="empty-id"),
    case(
        ["add", "--file", GRAPH],
        ["task id must not be empty"],
        [{"id": " "}],
        id="blank-id-in-file",
    ),
    # status and state
    case(["list", "--status", "bogus"], ["unknown status 'bogus'"], id="list-unknown-status"),
    case(["retry", "a"], ["cannot retry task 'a'", "available"], id="retry-available"),
    case(["retry", "d"], ["cannot retry task 'd'", "done"], id="retry-done"),
    case(["cancel", "d"], ["cannot cancel task 'd'", "done"], id="cancel-done"),
    case(["cancel", "c"], ["cannot cancel task 'c'", "cancelled"], id="cancel-cancelled"),
    case(["logs", "a", "--attempt", "0"], ["--attempt"], id="logs-attempt-0"),
    case(["add", "x", "--run", "a/b"], ["must not contain '/'"], id="run-name-slash"),
    case(["retry", "nope"], ["no task 'nope'"], id="retry-unknown"),
    case(["cancel", "nope"], ["no task 'nope'"], id="cancel-unknown"),
    case(["show", "nope"], ["no task 'nope'"], id="show-unknown"),
]


@pytest.mark.parametrize(("args", "file", "words"), CASES)
def test_bad_input_is_one_error_line_and_changes_nothing(
    args: list[str],
    file: Any,
    words: list[str],
    seeded: str,
    db_path: Path,
    bridge_env: dict[str, str],
    tmp_path: Path,
) -> None:
    if file is not None:
        text = file if isinstance(file, str) else json.dumps(file)
        (tmp_path / GRAPH).write_text(text, encoding="utf-8")
    # TMPDIR: a `run` that wrongly goes ahead keeps its process logs in the sandbox.
    result = bridge(*args, env={**bridge_env, "TMPDIR": str(tmp_path)}, cwd=tmp_path)
    assert_one_error_line(result, *words)
    assert file_digest(db_path) == seeded


@pytest.mark.parametrize(
    ("last", "words"),
    [
        pytest.param(
            {"id": "z", "dependencies": ["t49", "nope"]}, ["unknown task 'nope'"], id="unknown-dep"
        ),
        pytest.param(["z"], ["item 50 is not an object"], id="not-an-object"),
    ],
)
def test_file_with_one_bad_task_at_the_end_adds_nothing(
    last: Any,
    words: list[str],
    seeded: str,
    db_path: Path,
    bridge_env: dict[str, str],
    tmp_path: Path,
) -> None:
    good = [{"id": "t0", "dependencies": ["a"]}] + [
        {"id": f"t{i}", "dependencies": [f"t{i - 1}"]} for i in range(1, 50)
    ]
    (tmp_path / GRAPH).write_text(json.dumps([*good, last]), encoding="utf-8")
    result = bridge("add", "--file", GRAPH, env=bridge_env, cwd=tmp_path)
    assert_one_error_line(result, *words)
    assert query(db_path, "SELECT count(*) FROM tasks") == [(4,)]
    assert file_digest(db_path) == seeded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", [["dispatch", "--once"], ["worker", "--burst"]])
@pytest.mark.parametrize("password", [False, True], ids=["no-password", "password"])
def test_unreachable_redis_names_the_url(
    command: list[str],
    password: bool,
    seeded: str,
    db_path: Path,
    bridge_env: dict[str, str],
    tmp_path: Path,
) -> None:
    port = free_port()
    auth = f":{REDIS_PASSWORD}@" if password else ""
    env = {**bridge_env, "BRIDGE_REDIS_URL": f"redis://{auth}127.0.0.1:{port}/0"}
    result = bridge(*command, env=env, cwd=tmp_path, timeout=30)
    line = assert_one_error_line(result, "Redis", f"127.0.0.1:{port}")
    assert REDIS_PASSWORD not in result.stderr + result.stdout
    if password:
        assert f"redis://:***@127.0.0.1:{port}/0" in line
    assert file_digest(db_path) == seeded


@pytest.mark.parametrize(
    ("where", "command", "words"),
    [
        pytest.param("missing", ["add", "x"], ["does not exist"], id="directory-missing"),
        pytest.param("file-parent", ["add", "x"], ["cannot open database"], id="parent-is-a-file"),
        pytest.param(
            "proc", ["add", "x"], ["cannot open database", "/proc/bridge-test.db"], id="in-proc"
        ),
        pytest.param("proc", ["list"], ["no database at /proc/bridge-test.db"], id="list-in-proc"),
        pytest.param(
            "missing", ["list"], ["no database at", "bridge add or bridge run"], id="list-missing"
        ),
    ],
)
def test_unusable_database_path(
    where: str,
    command: list[str],
    words: list[str],
    seeded: str,
    db_path: Path,
    bridge_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # As root no directory mode stops a write, so use places nothing can be created in.
    if where == "missing":
        target = tmp_path / "no-such-dir" / "bridge.db"
    elif where == "file-parent":
        (tmp_path / "plain-file").write_text("not a directory\n")
        target = tmp_path / "plain-file" / "bridge.db"
    else:
        target = Path("/proc/bridge-test.db")
    env = {**bridge_env, "BRIDGE_DATABASE_URL": f"sqlite:///{target}"}
    result = bridge(*command, env=env, cwd=tmp_path)
    assert_one_error_line(result, str(target), *words)
    assert not target.exists()
    if where == "missing":
        assert not target.parent.exists()
    elif where == "file-parent":
        assert target.parent.is_file()
    assert file_digest(db_path) == seeded
