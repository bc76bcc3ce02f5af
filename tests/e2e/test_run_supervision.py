"""``bridge run`` owns what it starts: a locked-down private Redis, ordered stops on
every ending, no orphan, restarts that always work, and a verdict on FILE's tasks only.

Every test runs the real command with real children; the process tree is read
from /proc, the database with SQLite, the private Redis through its socket.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis
from helpers import BRIDGE, bridge, statuses, wait_until

from bridge.defaults import STOP_GRACE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TESTS = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live, non-zombie process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            table[int(name)] = (int(fields[1]), cmdline)
    return table


def tree(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> command line."""
    table = process_table()
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline
                todo.append(pid)
    return found


def alive(pids) -> set[int]:
    return set(pids) & set(process_table())


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


class Run:
    """One real ``bridge run`` in its own session, as a terminal would start it."""

    def __init__(self, tmp_path: Path, env: dict[str, str], graph: list[dict], *args: str):
        self.tmp_path = tmp_path
        path = tmp_path / "graph.json"
        path.write_text(json.dumps(graph))
        self.out = tmp_path / "run.out"
        self.err = tmp_path / "run.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [*BRIDGE, "run", str(path), *args],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def children(self) -> dict[int, str]:
        return tree(self.pid)

    def wait_for_children(self, workers: int = 2, horses: int = 0) -> dict[int, str]:
        """Wait until the dispatcher, the workers, the private Redis and ``horses``
        work horses all run; return the whole tree."""

        def complete() -> bool:
            found = self.children()
            kinds = [_kind(cmd) for cmd in found.values()]
            return (
                kinds.count("dispatcher") == 1
                and kinds.count("worker") >= workers + horses
                and kinds.count("redis") == 1
            )

        wait_until(complete, timeout=60, every=0.05)
        return self.children()

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"bridge run did not end\n{self.stderr()}") from None

    def kill(self) -> None:
        for pid in [self.pid, *self.children()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _kind(cmdline: str) -> str:
    if "redis-server" in cmdline:
        return "redis"
    if " dispatch" in cmdline:
        return "dispatcher"
    if " worker" in cmdline:
        return "worker"  # a worker, or its work horse (a fork, same command line)
    return "other"


@pytest.fixture
def run_env(db_url: str):
    """No Redis URL: runs here start their own (``--private-redis``), never the shared one.

    TMPDIR is short, so the private Redis's socket path fits in ``sun_path`` there
    and the tests can see every folder a run leaves.
    """
    temp = Path(tempfile.mkdtemp(prefix="bt-"))
    yield {
        **os.environ,
        "BRIDGE_DATABASE_URL": db_url,
        "BRIDGE_HANDLERS": "test_handlers",
        "PYTHONPATH": str(TESTS),
        "TMPDIR": str(temp),
    }
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def runs():
    started: list[Run] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.kill()
            run.process.wait(timeout=10)


def sleepers(n: int, seconds: float, **extra) -> list[dict]:
    return [
        {"id": f"s{i}", "kind": "sleep", "payload": {"seconds": seconds}, **extra} for i in range(n)
    ]


def working(db: Path) -> list[str]:
    return [task for task, status in statuses(db).items() if status == "working"]


# ------------------------------------------------------------------------------ private Redis


def test_private_redis_takes_no_client_without_its_password_and_never_shows_it(
    tmp_path, run_env, db_path, runs
):
    # Given a run on its own private Redis, one task slow and one failing
    graph = [
        {"id": "slow", "kind": "sleep", "payload": {"seconds": 8}},
        {"id": "bad", "kind": "fail", "payload": {"message": "broken"}},
    ]
    run = Run(tmp_path, run_env, graph, "--private-redis")
    runs.append(run)
    children = run.wait_for_children()
    # Then the server listens on a unix socket in a directory only its owner can enter
    match = re.search(r"started a private one at unix://:\*\*\*@(\S+?)\?db=0", run.stderr())
    assert match, run.stderr()
    socket_path = match.group(1)
    assert Path(socket_path).parent.parent == Path(run_env["TMPDIR"])
    assert stat.S_IMODE(os.stat(os.path.dirname(socket_path)).st_mode) == 0o700
    # And a client without the password is refused
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)) as refused:
        redis.Redis(unix_socket_path=socket_path).ping()
    assert "auth" in str(refused.value).lower()
    # And the password reaches the children only through their environment
    dispatcher = next(pid for pid, cmd in children.items() if _kind(cmd) == "dispatcher")
    url = environ_of(dispatcher)["BRIDGE_REDIS_URL"]
    password = re.match(r"unix://:([^@]+)@", url).group(1)
    assert len(password) >= 32
    assert redis.Redis.from_url(url).config_get("port") == {"port": "0"}  # no TCP at all
    # (not even on a command line, which every local user can read)
    assert not [cmd for cmd in process_table().values() if password in cmd]
    # When the run ends (stuck on the failed task)
    assert run.wait() == 1, run.stderr()
    # Then its logs are kept and named, and neither they nor its output hold the password
    logs = Path(re.search(r"process logs: (\S+)", run.stderr()).group(1))
    assert sorted(p.name for p in logs.iterdir()) == [
        "dispatcher.log",
        "worker-1.log",
        "worker-2.log",
    ]
    everything = run.stdout() + run.stderr() + "".join(p.read_text() for p in logs.iterdir())
    assert "slow" in everything and password not in everything
    assert not Path(socket_path).parent.exists()


def test_a_successful_run_leaves_no_temporary_folder(tmp_path, run_env, runs):
    # Given a run on its own private Redis
    run = Run(tmp_path, run_env, [{"id": "a", "kind": "echo", "payload": 1}], "--private-redis")
    runs.append(run)
    # When it succeeds
    assert run.wait() == 0, run.stderr()
    # Then it said what it stopped, and left nothing in the temporary folder
    assert "stopped 2 workers, the dispatcher and the private Redis" in run.stderr()
    assert "process logs" not in run.stderr()
    assert "started a private one at unix://:***@" + run_env["TMPDIR"] in run.stderr()
    assert list(Path(run_env["TMPDIR"]).iterdir()) == []


# ------------------------------------------------------------------------------ ordered stop


@pytest.mark.parametrize(
    "sig, code",
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["SIGTERM", "SIGHUP", "Ctrl-C"],
)
def test_a_stop_signal_stops_everything_in_order_and_keeps_finished_work(
    tmp_path, run_env, db_path, runs, sig, code
):
    # Given a run whose two workers are each in the middle of a task
    run = Run(tmp_path, run_env, sleepers(4, 3), "--private-redis")
    runs.append(run)
    run.wait_for_children()  # the graph is in the database by now
    wait_until(lambda: len(working(db_path)) == 2, timeout=60, every=0.05)
    in_hand = working(db_path)
    everything = run.wait_for_children(horses=2)
    # When the signal arrives (Ctrl-C: to the terminal's whole process group)
    if sig == signal.SIGINT:
        os.killpg(run.pid, sig)
    else:
        os.kill(run.pid, sig)
    # Then the run ends with 128 + the signal and says what it stopped
    assert run.wait(timeout=STOP_GRACE) == code, run.stderr()
    assert "stopped 2 workers, the dispatcher and the private Redis" in run.stderr()
    # And nothing it started is left
    assert alive(everything) == set()
    # And the tasks in hand were finished by the workers and recorded by the dispatcher
    done = statuses(db_path)
    assert all(done[task] == "done" for task in in_hand), done


def test_a_second_ctrl_c_kills_what_is_left_and_still_cleans_up(tmp_path, run_env, runs):
    # Given a run whose workers are in long tasks
    run = Run(tmp_path, run_env, sleepers(2, 120), "--private-redis")
    runs.append(run)
    everything = run.wait_for_children(horses=2)
    # When Ctrl-C is pressed twice
    os.killpg(run.pid, signal.SIGINT)
    time.sleep(1.5)
    started = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)
    # Then the run ends at once, without waiting for the tasks, and leaves nothing behind
    assert run.wait(timeout=STOP_GRACE) == 130, run.stderr()
    assert time.monotonic() - started < 10
    assert "killed what did not stop at once" in run.stderr()
    assert alive(everything) == set()
    assert list(Path(run_env["TMPDIR"]).glob("bridge-redis-*")) == []


def test_kill_9_of_run_leaves_no_orphan(tmp_path, run_env, db_path, runs):
    # Given a run whose workers are in the middle of short tasks
    run = Run(tmp_path, run_env, sleepers(2, 2), "--private-redis")
    runs.append(run)
    everything = run.wait_for_children(horses=2)
    # When bridge run is killed outright
    os.kill(run.pid, signal.SIGKILL)
    run.process.wait(timeout=10)
    # Then every process it started ends on its own within the stop grace
    wait_until(lambda: not alive(everything), timeout=STOP_GRACE + 15, every=0.2)


# ------------------------------------------------------------------------------ restarts


def test_a_worker_killed_again_and_again_is_restarted_with_a_new_name_and_backoff(
    tmp_path, run_env, db_path, runs
):
    # Given a run with enough work for a while
    run = Run(tmp_path, run_env, sleepers(10, 1.5, max_attempts=5), "--private-redis")
    runs.append(run)
    run.wait_for_children()
    names: set[str] = set()

    def first_worker() -> tuple[int, str] | None:
        for pid, (parent, cmd) in process_table().items():
            match = re.search(r"--name (\S+-w1-\d+)", cmd)
            if parent == run.pid and match and match.group(1) not in names:
                return pid, match.group(1)  # the worker itself, not its work horse
        return None

    # When its first worker is killed four times (more than the old limit of three)
    for _ in range(4):
        wait_until(lambda: first_worker() is not None, timeout=60, every=0.05)
        found = first_worker()
        assert found is not None
        pid, name = found
        names.add(name)
        time.sleep(0.3)  # let it register with RQ under that name
        os.kill(pid, signal.SIGKILL)
    # Then each restart waited twice as long as the one before, and the run went on
    assert run.wait(timeout=180) == 0, run.stderr()
    for delay in ("0.5s", "1s", "2s", "4s"):
        assert f"worker-1 was killed by SIGKILL; restarting it in {delay}" in run.stderr()
    # And every spawn had a name of its own
    assert len(names) == 4
    assert set(statuses(db_path).values()) == {"done"}


def test_a_dispatcher_that_cannot_stay_up_ends_the_run_in_one_line(tmp_path, run_env, runs):
    # Given a run
    run = Run(tmp_path, run_env, sleepers(1, 1), "--private-redis")
    runs.append(run)
    everything = dict(run.wait_for_children())
    killed: set[int] = set()
    # When its dispatcher dies within a second of every start
    deadline = time.monotonic() + 90
    while run.process.poll() is None and time.monotonic() < deadline:
        for pid, cmd in run.children().items():
            everything[pid] = cmd
            if _kind(cmd) == "dispatcher" and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.02)
    # Then the run gives up after five quick exits, names the log, and stops the rest
    assert run.wait(timeout=STOP_GRACE) == 1, run.stderr()
    errors = [line for line in run.stderr().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(killed) == 5, run.stderr()
    assert re.fullmatch(
        r"error: the dispatcher exited 5 times in a row within 2s of its start; see \S+"
        r"/dispatcher\.log",
        errors[0],
    )
    assert Path(errors[0].rsplit(" ", 1)[1]).is_file()
    assert "stopped 2 workers and the private Redis" in run.stderr()
    assert alive(everything) == set()
    assert "Traceback" not in run.stderr()


# ------------------------------------------------------------------------------ FILE's tasks


def test_run_judges_only_the_tasks_of_its_file(tmp_path, bridge_env, db_path):
    # Given a database where another graph is stuck on a failed task
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(
            [
                {"id": "other-bad", "kind": "fail"},
                {"id": "other-next", "dependencies": ["other-bad"]},
            ]
        )
    )
    assert bridge("add", "--file", str(other), env=bridge_env).returncode == 0
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"id": "mine-1", "kind": "echo", "payload": 1}, {"id": "mine-2"}]))
    # When a file of healthy tasks is run
    result = bridge("run", str(mine), env=bridge_env, cwd=tmp_path, timeout=120)
    # Then its verdict is about its own tasks only
    assert result.returncode == 0, result.stdout + result.stderr
    assert "summary: 2 done" in result.stdout
    assert "other" not in result.stdout + result.stderr
    assert statuses(db_path)["other-bad"] == "failed"


def test_run_of_an_empty_list_says_so_and_changes_nothing(tmp_path, bridge_env, db_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = bridge("run", str(empty), env=bridge_env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"error: {empty} has no tasks\n"
    assert not db_path.exists()


def test_run_adds_nothing_when_redis_cannot_be_reached(tmp_path, bridge_env, db_path):
    # Given an explicit Redis URL where nothing answers
    env = {**bridge_env, "BRIDGE_REDIS_URL": "redis://127.0.0.1:1/0"}
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps([{"id": "a"}]))
    # When the graph is run
    result = bridge("run", str(graph), env=env, cwd=tmp_path)
    # Then it fails in one line, before the database is even opened
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert len(result.stderr.splitlines()) == 1
    assert not db_path.exists()
