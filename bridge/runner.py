"""``bridge wait`` and ``bridge run``: watching a graph, and running one end to end.

``run`` is a supervisor of real processes (one dispatcher, N workers, maybe a
private Redis), the same ones a deployment runs, so the one-command path
exercises exactly what production does. It owns them: whichever way it ends,
it stops them in order (workers finish their task, the dispatcher applies the
last reports, then Redis goes), and none outlives it.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bridge import store
from bridge.broker import BrokerError, connect
from bridge.children import adopt_orphans, descendants, die_with_parent, kill_all
from bridge.defaults import (
    DISPATCHER_MAX_QUICK_EXITS,
    DISPATCHER_MIN_UPTIME,
    RESTART_BACKOFF,
    RESTART_BACKOFF_CAP,
    RESTART_RESET_AFTER,
    RUN_POLL,
    SERVE_READY_WAIT,
    STOP_GRACE,
    STOP_POLL,
)
from bridge.errors import BridgeError
from bridge.redis_server import NO_REDIS_MESSAGE, PrivateRedis, find_redis_binary
from bridge.render import console, tasks_table
from bridge.settings import Settings, redact_url
from bridge.states import FINISHED_BADLY, IN_FLIGHT, TaskStatus

EXIT_DONE = 0
EXIT_STUCK = 1
EXIT_TIMEOUT = 3


class RunError(BridgeError):
    """``bridge run`` cannot start or cannot go on; one line for the user."""


def say(line: str) -> None:
    """One line on stderr, as is: never markup, never wrapped (paths stay whole)."""
    console(stderr=True).print(line, markup=False, highlight=False, soft_wrap=True)


def _describe(p: store.Progress) -> str:
    parts = [f"{p.count(s)} {s.value}" for s in TaskStatus if p.count(s)]
    return ", ".join(parts) or "no tasks"


def wait_for_graph(
    engine: store.Engine,
    *,
    task_ids: Sequence[str] | None = None,
    timeout: float | None = None,
    show_progress: bool = True,
    on_poll: Callable[[], None] | None = None,
) -> int:
    """Block until every task is done (0), nothing more can run (1), or timeout (3).

    With ``task_ids`` only those tasks are judged (``bridge run FILE``): other
    tasks of the database may run or be stuck without changing the outcome,
    except that when nothing anywhere is in flight or ready, nothing will ever
    move again, and that is stuck too.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    out = console(stderr=True)
    columns = (
        TextColumn("[bold]tasks"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
    )
    with Progress(*columns, console=out, disable=not show_progress, transient=False) as bar:
        handle = bar.add_task("", total=None)
        while True:
            with store.reading(engine) as session:
                state, verdict = _judge(session, task_ids)
            bar.update(
                handle,
                total=state.total,
                completed=state.count(TaskStatus.DONE),
                description=_describe(state),
            )
            if verdict is not None:
                return verdict
            if deadline is not None and time.monotonic() >= deadline:
                return EXIT_TIMEOUT
            if on_poll is not None:
                on_poll()
            time.sleep(RUN_POLL)


def _judge(
    session: store.Session, task_ids: Sequence[str] | None
) -> tuple[store.Progress, int | None]:
    state = store.progress(session=session, task_ids=task_ids)
    if state.finished:
        return state, EXIT_DONE
    if state.stuck:
        return state, EXIT_STUCK
    if task_ids is not None and state.ready == 0 and not _in_flight(state):
        everything = store.progress(session=session)
        if everything.ready == 0 and not _in_flight(everything):
            return state, EXIT_STUCK
    return state, None


def _in_flight(state: store.Progress) -> int:
    return sum(state.count(s) for s in IN_FLIGHT)


def report_stuck(engine: store.Engine, task_ids: Sequence[str] | None = None) -> list[str]:
    """Lines naming the failed or cancelled tasks (of ``task_ids``) that stop the graph."""
    wanted = None if task_ids is None else set(task_ids)
    with store.reading(engine) as session:
        bad = [
            t
            for s in FINISHED_BADLY
            for t in store.list_tasks(session=session, status=s)
            if wanted is None or t.id in wanted
        ]
        blocked = store.dependents_blocked_by(session=session, task_ids=[t.id for t in bad])
    lines = [
        f"{t.id}: {t.status}" + (f" ({t.error.splitlines()[0]})" if t.error else "") for t in bad
    ]
    if blocked:
        lines.append(f"{blocked} task(s) wait on them; 'bridge retry ID' resumes the graph")
    return lines


# ------------------------------------------------------------------------------ signals


class Interrupted(Exception):
    """A stop signal arrived; ``bridge run`` stops what it started and exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP, noted rather than acted on where they land.

    The first one asks for the orderly stop, checked at safe points (between
    polls), so no child is half started when it begins; any further one asks
    the stop to stop waiting and kill. Ctrl-C reaches only ``bridge run``: its
    children run in their own sessions.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._note)
            except ValueError:  # not the main thread: the caller keeps its own handling
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum

    def check(self) -> None:
        if self.first is not None:
            raise Interrupted(self.first)

    @property
    def escalated(self) -> bool:
        return self.count > 1


# ------------------------------------------------------------------------------ children


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    worker_tag: str | None = None
    """Workers get ``--name <tag>-<spawn>``: RQ keeps a killed worker's name registered
    for minutes, so a restarted worker must never reuse it."""
    process: subprocess.Popen | None = None
    spawns: int = 0
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF
    restart_at: float | None = None
    quick_exits: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts the dispatcher and workers as child processes, restarts them, stops them.

    Children run in their own sessions (a terminal's Ctrl-C is for ``bridge
    run`` to handle, in order) and get SIGTERM from the kernel if ``bridge run``
    dies without stopping them (Linux).
    """

    def __init__(
        self, settings: Settings, workers: int, log_dir: Path, *, serve_port: int | None = None
    ) -> None:
        self.env = {**os.environ, **settings.as_env()}
        base = [sys.executable, "-m", "bridge"]
        tag = f"{socket.gethostname()}-run{os.getpid()}"
        self.dispatcher = Child("dispatcher", [*base, "dispatch"], log_dir / "dispatcher.log")
        self.server = (
            None
            if serve_port is None
            else Child(
                "serve",
                [*base, "serve", "--host", "127.0.0.1", "--port", str(serve_port)],
                log_dir / "serve.log",
            )
        )
        self.workers = [
            Child(
                f"worker-{n}",
                [*base, "worker"],
                log_dir / f"worker-{n}.log",
                worker_tag=f"{tag}-w{n}",
            )
            for n in range(1, workers + 1)
        ]

    @property
    def children(self) -> list[Child]:
        return [self.dispatcher, *self.workers, *([self.server] if self.server else [])]

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        child.spawns += 1
        argv = child.argv
        if child.worker_tag is not None:
            argv = [*argv, "--name", f"{child.worker_tag}-{child.spawns}"]
        with open(child.log, "ab") as log:
            child.process = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        child.started_at = time.monotonic()
        child.restart_at = None

    def wait_served(self, port: int, poll: Callable[[], None]) -> bool:
        """Wait until the ``serve`` child accepts connections on ``port`` (so the URL
        printed answers), at most ``SERVE_READY_WAIT`` s; False if it did not."""
        deadline = time.monotonic() + SERVE_READY_WAIT
        while time.monotonic() < deadline:
            poll()
            if self.server is None or not self.server.running:
                return False
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def check(self) -> None:
        """Restart children that died, with backoff; the database makes that safe.

        A worker is always restarted. Only a dispatcher that cannot stay up ends
        the run, since without one nothing moves.
        """
        at = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if at >= child.restart_at:
                    self._spawn(child)
                continue
            if child.process is None or child.process.poll() is None:
                continue
            uptime = at - child.started_at
            if uptime >= RESTART_RESET_AFTER:
                child.backoff = RESTART_BACKOFF
            if child is self.dispatcher:
                child.quick_exits = child.quick_exits + 1 if uptime < DISPATCHER_MIN_UPTIME else 0
                if child.quick_exits >= DISPATCHER_MAX_QUICK_EXITS:
                    raise RunError(
                        f"the dispatcher exited {child.quick_exits} times in a row within"
                        f" {DISPATCHER_MIN_UPTIME:g}s of its start; see {child.log}"
                    )
            delay, child.backoff = child.backoff, min(child.backoff * 2, RESTART_BACKOFF_CAP)
            child.restart_at = at + delay
            say(
                f"{child.name} {_how_it_ended(child.process.returncode)};"
                f" restarting it in {delay:g}s (log: {child.log})"
            )

    def stop(self, escalated: Callable[[], bool]) -> tuple[int, bool, bool]:
        """Workers first (they finish their task), then the dispatcher (it applies the
        last reports). Each group gets ``STOP_GRACE``, or less once ``escalated()``;
        then it and everything it started is killed. Returns (workers stopped,
        dispatcher stopped, anything killed)."""
        workers = [c for c in self.workers if c.running]
        killed = _stop_group(workers, escalated)
        dispatcher = [self.dispatcher] if self.dispatcher.running else []
        server = [self.server] if self.server is not None and self.server.running else []
        killed = _stop_group(dispatcher + server, escalated) or killed
        for child in self.children:
            child.restart_at = None
        return len(workers), bool(dispatcher), killed


def _stop_group(children: list[Child], escalated: Callable[[], bool]) -> bool:
    """SIGTERM each, wait for all; kill (with descendants) what outlives the grace."""
    processes = [c.process for c in children if c.process is not None]
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + STOP_GRACE
    while any(p.poll() is None for p in processes):
        if escalated() or time.monotonic() >= deadline:
            for process in processes:
                if process.poll() is None:
                    kill_all(descendants(process.pid))
                    process.kill()
            for process in processes:
                process.wait()
            return True
        time.sleep(STOP_POLL)
    return False


def _how_it_ended(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exited with code {returncode}"


# ------------------------------------------------------------------------------ run


def resolve_redis(
    settings: Settings, *, private: bool = False
) -> tuple[Settings, PrivateRedis | None]:
    """Use the configured Redis; if none answers and none was asked for (or ``private``),
    start a private one: unix socket in a 0700 directory, random password, never printed."""
    reason = "--private-redis"
    why_not = "a private Redis was asked for"
    if not private:
        try:
            connect(settings.redis_url).close()
            return settings, None
        except BrokerError as exc:
            if settings.redis_explicit:
                raise
            reason = f"no Redis at {redact_url(settings.redis_url)}"
            why_not = str(exc)
    binary = find_redis_binary()
    if binary is None:
        raise RunError(f"{why_not}, and {NO_REDIS_MESSAGE}")
    try:
        server = PrivateRedis(binary=binary, private=True, keeper=True).start()
    except RuntimeError as exc:
        raise RunError(str(exc)) from None
    say(f"{reason}: started a private one at {redact_url(server.url)} for this run")
    return settings.with_(redis_url=server.url), server


def _stop_line(workers: int, dispatcher: bool, redis: bool, killed: bool) -> str | None:
    parts = []
    if workers:
        parts.append(f"{workers} worker{'s' if workers != 1 else ''}")
    if dispatcher:
        parts.append("the dispatcher")
    if redis:
        parts.append("the private Redis")
    if not parts:
        return None
    what = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"stopped {what}" + (" (killed what did not stop at once)" if killed else "")


def run_graph(
    settings: Settings,
    database: Callable[[], store.Engine],
    task_ids: Sequence[str],
    workers: int,
    *,
    add: Callable[[Settings], None],
    private_redis: bool = False,
    serve_port: int | None = None,
) -> int:
    """Resolve Redis, ``add`` the graph, run it with real processes, stop them all.

    Redis comes first so that a graph is never added (nor the ``database``
    opened) when nothing can run it.
    Every way this ends (graph done or stuck, a stop signal, a second one, an
    error) stops what it started in order and says so in one line; the logs
    folder is removed after a success and named otherwise. With ``serve_port``,
    ``bridge serve`` runs beside them (loopback) while the graph runs.
    """
    if serve_port is not None:
        from bridge.web.serving import check_port

        check_port("127.0.0.1", serve_port)  # taken: say so before anything starts
    with StopSignals() as signals:
        settings, private = resolve_redis(settings, private=private_redis)
        supervisor: Supervisor | None = None
        log_dir: Path | None = None
        code = EXIT_STUCK
        engine: store.Engine | None = None
        try:
            signals.check()
            add(settings)
            engine = database()
            signals.check()
            adopt_orphans()
            log_dir = Path(tempfile.mkdtemp(prefix="bridge-run-"))
            supervisor = Supervisor(settings, workers, log_dir, serve_port=serve_port)
            supervisor.start()
            if serve_port is not None:
                url = f"http://127.0.0.1:{serve_port}/"
                if supervisor.wait_served(serve_port, signals.check):
                    say(f"dashboard: {url} (log: {log_dir / 'serve.log'})")
                else:
                    say(f"dashboard: {url} does not answer yet (log: {log_dir / 'serve.log'})")

            def poll() -> None:
                signals.check()
                assert supervisor is not None
                supervisor.check()

            code = wait_for_graph(engine, task_ids=task_ids, on_poll=poll)
        except Interrupted as exc:
            code = 128 + exc.signum
            say(f"{exc}: stopping the workers, then the dispatcher")
        finally:
            stopped = (0, False, False)
            if supervisor is not None:
                stopped = supervisor.stop(lambda: signals.escalated)
            if private is not None:
                if signals.escalated:
                    private.kill()
                private.stop()
            kill_all(descendants(os.getpid()))  # orphaned work horses, adopted
            line = _stop_line(stopped[0], stopped[1], private is not None, stopped[2])
            if line:
                say(line)
            if log_dir is not None and code != EXIT_DONE:
                say(f"process logs: {log_dir}")
        if log_dir is not None and code == EXIT_DONE:
            shutil.rmtree(log_dir, ignore_errors=True)
        if engine is not None:
            _summarise(engine, task_ids, code)
    return code


def _summarise(engine: store.Engine, task_ids: Sequence[str], code: int) -> None:
    with store.reading(engine) as session:
        tasks = [store.get_task(session=session, task_id=t) for t in task_ids]
    shown = [t for t in tasks if t is not None]
    out = console()
    if len(shown) <= 50:
        out.print(tasks_table(shown, title="bridge run"))
    counts: dict[str, int] = {}
    for task in shown:
        counts[task.status] = counts.get(task.status, 0) + 1
    out.print("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if code == EXIT_STUCK:
        for line in report_stuck(engine, task_ids):
            say(line)
