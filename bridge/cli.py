"""The ``bridge`` command: a thin skin over the store, the broker and the dispatcher.

Every error a user can cause ends as one line ``error: ...`` on stderr and a
non-zero exit, never a traceback; ``main`` is where that is enforced.
"""

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from bridge import graph, render, store
from bridge.broker import Broker, BrokerError, Withdrawal, connect, nudge_quietly
from bridge.errors import BridgeError
from bridge.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_URL,
    DEFAULT_SLOTS,
    WORKER_CLASSES,
    Settings,
    redact_url,
)
from bridge.states import TaskStatus


class Context:
    """What every command gets: the settings, and the engine built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: store.Engine | None = None

    @property
    def engine(self) -> store.Engine:
        if self._engine is None:
            self._engine = store.open_engine(self.settings.database_url)
        return self._engine

    @property
    def namespace(self) -> str:
        """The database's Redis namespace (read once)."""
        with store.reading(self.engine) as session:
            return store.namespace(session=session)

    def broker(self, *, check: bool = True, resilient: bool = False) -> Broker:
        client = connect(self.settings.redis_url, check=check, resilient=resilient)
        return Broker(client, self.namespace)


pass_context = click.make_pass_decorator(Context)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": False})
@click.option(
    "--database-url",
    envvar="BRIDGE_DATABASE_URL",
    show_envvar=True,
    help=f"SQLAlchemy URL of the database. [default: {DEFAULT_DATABASE_URL}]",
)
@click.option(
    "--redis-url",
    envvar="BRIDGE_REDIS_URL",
    show_envvar=True,
    help=f"Redis URL (redis://, rediss:// for TLS, unix://). [default: {DEFAULT_REDIS_URL}]",
)
@click.option(
    "--queue",
    envvar="BRIDGE_QUEUE",
    show_envvar=True,
    help=f"RQ queue name. [default: {DEFAULT_QUEUE}]",
)
@click.option(
    "--slots",
    envvar="BRIDGE_SLOTS",
    show_envvar=True,
    type=int,
    help=f"Tasks in flight at once. [default: {DEFAULT_SLOTS}]",
)
@click.option(
    "--handlers",
    envvar="BRIDGE_HANDLERS",
    show_envvar=True,
    help="Comma-separated modules that register handlers (imported by workers).",
)
@click.option(
    "--worker-class",
    envvar="BRIDGE_WORKER_CLASS",
    show_envvar=True,
    type=click.Choice(WORKER_CLASSES),
    help="fork: RQ Worker, a process per job (isolated, stoppable);"
    " simple: in-process, faster. [default: fork]",
)
@click.option(
    "--max-output",
    envvar="BRIDGE_MAX_OUTPUT",
    show_envvar=True,
    type=int,
    help="Bytes of output/error kept per task; more is truncated with a marker. [default: 1048576]",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.version_option(package_name="bridge")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, **options: Any) -> None:
    """bridge: a durable task graph in SQL, run by RQ workers through Redis."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    ctx.obj = Context(Settings.from_env({}, **options))


# ------------------------------------------------------------------------------ add


@cli.command()
@click.argument("task_id", required=False)
@click.option(
    "--file", "file_path", type=click.Path(dir_okay=False), help="A JSON list of task objects."
)
@click.option("--description", default="", help="What the task does.")
@click.option("--kind", default="noop", help="The handler that runs it.")
@click.option("--payload", help="JSON value passed to the handler.")
@click.option("--after", "after", multiple=True, help="A dependency (repeatable).")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--max-attempts", type=int, default=1, help="Attempts before it fails for good.")
@click.option("--timeout", type=int, help="Seconds an attempt may run.")
@pass_context
def add(
    context: Context,
    task_id: str | None,
    file_path: str | None,
    description: str,
    kind: str,
    payload: str | None,
    after: tuple[str, ...],
    priority: int,
    max_attempts: int,
    timeout: int | None,
) -> None:
    """Add one task, or a whole graph with --file (all or nothing)."""
    if file_path is not None:
        if task_id is not None:
            fail("give either a task ID or --file, not both", 2)
        specs = graph.parse_graph(_read(file_path), file_path)
    elif task_id is None:
        fail("give a task ID or --file", 2)
    else:
        specs = [
            graph.make_spec(
                task_id=task_id,
                description=description,
                kind=kind,
                payload=graph.parse_payload(payload),
                dependencies=after,
                priority=priority,
                max_attempts=max_attempts,
                timeout=timeout,
            )
        ]
    added = add_specs(context, specs, skip_same=False)
    click.echo(f"added {len(added.added)} task(s)")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}")


def add_specs(context: Context, specs: list[graph.TaskSpec], *, skip_same: bool) -> store.AddResult:
    _warn_unknown_kinds(context.settings, specs)
    with store.writing(context.engine) as session:
        result = store.add_tasks(
            session=session,
            specs=specs,
            skip_same=skip_same,
            max_payload=context.settings.max_output,
            queue=context.settings.queue,
        )
    if result.added:
        _nudge(context)
    return result


def _warn_unknown_kinds(settings: Settings, specs: list[graph.TaskSpec]) -> None:
    from bridge.workers.registry import HandlerError, is_registered, load_modules

    try:
        load_modules(settings.handlers)
    except HandlerError as exc:
        warn(str(exc))
    unknown = sorted({s.kind for s in specs if not is_registered(s.kind)})
    if unknown:
        warn(
            f"no handler registered here for kind(s) {', '.join(unknown)};"
            " workers must load it (BRIDGE_HANDLERS) or these tasks will fail"
        )


def _nudge(context: Context) -> None:
    """Wake a running dispatcher at once; without Redis it finds the tasks on its own."""
    nudge_quietly(context.settings.redis_url, context.namespace)


# ------------------------------------------------------------------------------ reading


def _status_option(value: str | None) -> TaskStatus | None:
    if value is None:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        fail(f"unknown status {value!r} (one of: {', '.join(s.value for s in TaskStatus)})", 2)


@cli.command("list")
@click.option("--status", help="Only tasks in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_(context: Context, status: str | None, as_json: bool) -> None:
    """List tasks in the order they were added."""
    wanted = _status_option(status)
    with store.reading(context.engine) as session:
        tasks = store.list_tasks(session=session, status=wanted)
        if as_json:
            render.print_json([store.task_dict(t) for t in tasks])
        else:
            render.console().print(render.tasks_table(tasks))


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def show(context: Context, task_id: str, as_json: bool) -> None:
    """Show one task, and why it is in its state."""
    with store.reading(context.engine) as session:
        task = store.require_task(session=session, task_id=task_id)
        deps = store.dependency_states(session=session, task_id=task_id)
        if as_json:
            data = store.task_dict(task)
            data["why"] = render.explain(task, deps)
            render.print_json(data)
        else:
            render.console().print(render.task_detail(task, deps))


@cli.command()
@click.argument("task_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def events(context: Context, task_id: str | None, as_json: bool) -> None:
    """The audit trail: every state change (of one task, or all)."""
    with store.reading(context.engine) as session:
        if task_id is not None:
            store.require_task(session=session, task_id=task_id)
        rows = store.list_events(session=session, task_id=task_id)
        if as_json:
            render.print_json([render.event_dict(e) for e in rows])
        else:
            render.console().print(render.events_table(rows))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def slots(context: Context, as_json: bool) -> None:
    """The worker slots: which task holds each."""
    with store.reading(context.engine) as session:
        rows = store.list_slots(session=session)
        if as_json:
            render.print_json([render.slot_dict(s) for s in rows])
        else:
            render.console().print(render.slots_table(rows))


# ------------------------------------------------------------------------------ admin


@cli.command()
@click.argument("task_id")
@pass_context
def retry(context: Context, task_id: str) -> None:
    """Put a failed or cancelled task back to available (its history is kept)."""
    with store.writing(context.engine) as session:
        store.retry_task(session=session, task_id=task_id)
    _nudge(context)
    click.echo(f"task {task_id!r} is available again")


@cli.command()
@click.argument("task_id")
@pass_context
def cancel(context: Context, task_id: str) -> None:
    """Cancel a task; a queued job is removed, a running one is asked to stop."""
    with store.writing(context.engine) as session:
        cancelled = store.cancel_task(session=session, task_id=task_id)
    _nudge(context)  # its slot is free: let the dispatcher fill it now
    message = f"task {task_id!r} cancelled"
    if cancelled.job_id is not None:
        try:
            outcome = context.broker().cancel(cancelled.job_id, cancelled.queue)
            message += f"; {outcome.message}"
        except BrokerError as exc:
            message += f"; Redis not reachable ({exc}), any result it sends will be ignored"
    click.echo(message)


@cli.command()
@click.option("--yes", is_flag=True, help="Really delete every task.")
@pass_context
def clean(context: Context, yes: bool) -> None:
    """Delete all tasks and their history, and reset the slots."""
    if not yes:
        fail("this deletes every task and its history; add --yes to confirm", 2)
    with store.writing(context.engine) as session:
        cleaned = store.clean(session=session)
    try:
        context.broker().supersede([Withdrawal(job, queue) for job, queue in cleaned.in_flight])
    except BrokerError:
        pass  # their reports can never match a later task: tokens are never reused
    click.echo(f"deleted {cleaned.count} task(s)")


# ------------------------------------------------------------------------------ services


@cli.command()
@click.option(
    "--once", is_flag=True, help="One pass (recover, apply reports, dispatch), then exit."
)
@pass_context
def dispatch(context: Context, once: bool) -> None:
    """Run the dispatcher until SIGINT/SIGTERM."""
    from bridge.dispatcher import serve, totals_line

    engine = context.engine
    broker = context.broker(resilient=True)
    logging.getLogger("bridge").info(
        "dispatching queue %r from %s to %s with %d slot(s)",
        context.settings.queue,
        redact_url(context.settings.database_url),
        redact_url(context.settings.redis_url),
        context.settings.slots,
    )
    totals = serve(context.settings, engine, broker, once=once)
    logging.getLogger("bridge").info("dispatcher stopped: %s", totals_line(totals))


@cli.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--name", help="Worker name (default: RQ's).")
@click.option("--quiet", is_flag=True, help="Log warnings only.")
@pass_context
def worker(context: Context, burst: bool, name: str | None, quiet: bool) -> None:
    """Run an RQ worker on the bridge queue."""
    from bridge.workers.process import run_worker

    run_worker(
        context.settings, burst=burst, name=name, logging_level="WARNING" if quiet else "INFO"
    )


@cli.command()
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 3).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_context
def wait(context: Context, timeout: float | None, quiet: bool) -> None:
    """Wait for the graph: 0 all done, 1 nothing more can run, 3 timeout."""
    from bridge.runner import EXIT_STUCK, EXIT_TIMEOUT, report_stuck, wait_for_graph

    code = wait_for_graph(context.engine, timeout=timeout, show_progress=not quiet)
    if code == EXIT_STUCK:
        click.echo("stopped: nothing more can run", err=True)
        for line in report_stuck(context.engine):
            click.echo(f"  {line}", err=True)
    elif code == EXIT_TIMEOUT:
        click.echo(f"timed out after {timeout:g}s", err=True)
    sys.exit(code)


@cli.command()
@click.argument("file_path", metavar="FILE")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Worker processes."
)
@click.option(
    "--private-redis",
    is_flag=True,
    help="Start a private Redis for this run (unix socket, random password) even if one answers.",
)
@pass_context
def run(context: Context, file_path: str, workers: int, private_redis: bool) -> None:
    """Add the graph in FILE (resuming if already added) and run it to the end.

    Exit 0 when FILE's tasks are all done, 1 when nothing more of them can run,
    128 + the signal's number when stopped by SIGINT, SIGTERM or SIGHUP.
    """
    from bridge.runner import run_graph

    specs = graph.parse_graph(_read(file_path), file_path)
    if not specs:
        fail(f"{file_path} has no tasks")

    def add(settings: Settings) -> None:
        context.settings = settings  # the Redis the run resolved, for the wake-up nudge
        result = add_specs(context, specs, skip_same=True)
        click.echo(f"added {len(result.added)} task(s), {len(result.skipped)} already there")

    code = run_graph(
        context.settings,
        lambda: context.engine,  # opened (maybe created) only once Redis is known
        [s.id for s in specs],
        workers,
        add=add,
        private_redis=private_redis,
    )
    sys.exit(code)


def main() -> None:
    """Entry point: turns every expected failure into one ``error:`` line."""
    try:
        code = cli.main(standalone_mode=False, prog_name="bridge")
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        fail(exc.format_message().replace("\n", " "), 2)
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except BridgeError as exc:
        fail(str(exc).replace("\n", " "))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
