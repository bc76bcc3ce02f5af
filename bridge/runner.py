"""``bridge wait`` and ``bridge run``: watching a graph, and running one end to end.

``run`` is a supervisor of real processes (one dispatcher, N workers, maybe a
private Redis), the same ones a deployment runs, so the one-command path
exercises exactly what production does.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bridge import store
from bridge.broker import BrokerError, connect
from bridge.errors import BridgeError
from bridge.redis_server import NO_REDIS_MESSAGE, PrivateRedis, find_redis_binary
from bridge.render import console, tasks_table
from bridge.settings import Settings, redact_url
from bridge.states import FINISHED_BADLY, TaskStatus

EXIT_DONE = 0
EXIT_STUCK = 1
EXIT_TIMEOUT = 3
POLL = 0.25
STOP_GRACE = 30.0
"""Seconds children get to finish their current task after SIGTERM."""


class RunError(BridgeError):
    """``bridge run`` cannot start; one line for the user."""


def _describe(p: store.Progress) -> str:
    parts = [f"{p.count(s)} {s.value}" for s in TaskStatus if p.count(s)]
    return ", ".join(parts) or "no tasks"


def wait_for_graph(
    engine: store.Engine,
    *,
    timeout: float | None = None,
    show_progress: bool = True,
    on_poll: Callable[[], None] | None = None,
) -> int:
    """Block until every task is done (0), nothing more can run (1), or timeout (3)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out = console(stderr=True)
    columns = (
        TextColumn("[bold]tasks"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=out, disable=not show_progress, transient=False) as bar:
        handle = bar.add_task("", total=None)
        while True:
            with store.reading(engine) as session:
                state = store.progress(session=session)
            bar.update(
                handle,
                total=state.total,
                completed=state.count(TaskStatus.DONE),
                description=_describe(state),
            )
            if state.finished:
                return EXIT_DONE
            if state.stuck:
                return EXIT_STUCK
            if deadline is not None and time.monotonic() >= deadline:
                return EXIT_TIMEOUT
            if on_poll is not None:
                on_poll()
            time.sleep(POLL)


def report_stuck(engine: store.Engine) -> list[str]:
    """Lines naming the failed or cancelled tasks that stop the graph."""
    with store.reading(engine) as session:
        bad = [t for s in FINISHED_BADLY for t in store.list_tasks(session=session, status=s)]
        blocked = store.dependents_blocked_by(session=session, task_ids=[t.id for t in bad])
    lines = [
        f"{t.id}: {t.status}" + (f" ({t.error.splitlines()[0]})" if t.error else "") for t in bad
    ]
    if blocked:
        lines.append(f"{blocked} task(s) wait on them; 'bridge retry ID' resumes the graph")
    return lines


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen | None = None
    restarts: int = 0


class Supervisor:
    """Starts the dispatcher and workers as child processes and stops them cleanly."""

    def __init__(self, settings: Settings, workers: int, log_dir: Path) -> None:
        self.env = {**os.environ, **settings.as_env()}
        base = [sys.executable, "-m", "bridge"]
        tag = f"run{os.getpid()}"
        self.children = [Child("dispatcher", [*base, "dispatch"], log_dir / "dispatcher.log")]
        self.children += [
            Child(
                f"worker-{n}",
                [*base, "worker", "--name", f"{tag}-w{n}"],
                log_dir / f"worker-{n}.log",
            )
            for n in range(1, workers + 1)
        ]

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        with open(child.log, "ab") as log:
            child.process = subprocess.Popen(
                child.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check(self) -> None:
        """Restart a child that died; the database makes that safe."""
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                if child.restarts >= 3:
                    raise RunError(f"{child.name} keeps exiting; see {child.log}")
                child.restarts += 1
                console(stderr=True).print(
                    f"{child.name} exited with {child.process.returncode}; restarting it",
                    style="yellow",
                )
                self._spawn(child)

    def stop(self) -> None:
        """SIGTERM all (workers finish their task, the dispatcher commits), then wait."""
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def resolve_redis(settings: Settings) -> tuple[Settings, PrivateRedis | None]:
    """Use the configured Redis; if none answers and none was asked for, start a private one."""
    try:
        connect(settings.redis_url).close()
        return settings, None
    except BrokerError as exc:
        if settings.redis_explicit:
            raise
        reason = str(exc)
    binary = find_redis_binary()
    if binary is None:
        raise RunError(f"{reason}, and {NO_REDIS_MESSAGE}")
    private = PrivateRedis(binary=binary).start()
    console(stderr=True).print(
        f"no Redis at {redact_url(settings.redis_url)}:"
        f" started a private one at {redact_url(private.url)} for this run"
    )
    return settings.with_(redis_url=private.url), private


def run_graph(
    settings: Settings, engine: store.Engine, task_ids: Sequence[str], workers: int
) -> int:
    settings, private = resolve_redis(settings)
    log_dir = Path(tempfile.mkdtemp(prefix="bridge-run-"))
    supervisor = Supervisor(settings, workers, log_dir)
    out = console()
    code = EXIT_STUCK
    try:
        supervisor.start()
        code = wait_for_graph(engine, on_poll=supervisor.check)
    except KeyboardInterrupt:
        console(stderr=True).print("interrupted: stopping the dispatcher and workers")
        code = 130
    finally:
        supervisor.stop()
        if private is not None:
            private.stop()
    with store.reading(engine) as session:
        tasks = [store.get_task(session=session, task_id=t) for t in task_ids]
    shown = [t for t in tasks if t is not None]
    if len(shown) <= 50:
        out.print(tasks_table(shown, title="bridge run"))
    counts: dict[str, int] = {}
    for task in shown:
        counts[task.status] = counts.get(task.status, 0) + 1
    out.print("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if code == EXIT_STUCK:
        for line in report_stuck(engine):
            console(stderr=True).print(line)
    if code != EXIT_DONE:
        console(stderr=True).print(f"process logs: {log_dir}")
    return code
