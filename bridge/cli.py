"""The ``bridge`` command: a thin skin over the use cases in ``bridge.usecases``.

Each command parses its options, calls one use case and renders the result;
warnings go to stderr as ``warning: ...``. Every error a user can cause ends
as one line ``error: ...`` on stderr and a non-zero exit, never a traceback;
``main`` is where that is enforced.

The store, the renderer and the use cases are imported on first use, so that
``bridge worker`` (which never opens the database) starts without loading
SQLAlchemy or rich: start-up counts for every worker a supervisor restarts.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from bridge.app import App
from bridge.broker import Broker, connect
from bridge.errors import BridgeError
from bridge.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_URL,
    DEFAULT_SLOTS,
    WORKER_CLASSES,
    Settings,
    redact_text,
    redact_url,
)
from bridge.states import TaskStatus

CREATING_COMMANDS = frozenset({"add", "run", "submit", "dispatch", "serve", "mcp"})
"""The only commands that create a missing database; the others say there is none."""

ENV_ONLY_SETTINGS = ("BRIDGE_API_TOKEN", "BRIDGE_API_TOKEN_FILE", "BRIDGE_MAX_BODY")
"""Read from the environment alone: a token on a command line shows in ``ps``."""

FOLLOW_EVERY = 0.5
"""Seconds between looks for new events with ``events --follow``."""


class _LazyModule:
    """A module imported on its first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


graph: Any = _LazyModule("bridge.graph")
render: Any = _LazyModule("bridge.render")
usecases: Any = _LazyModule("bridge.usecases")


class Context(App):
    """What every command gets: the use cases' ``App``, plus the services' Redis client."""

    def service_broker(self) -> Broker:
        """A broker whose client rides out a Redis restart (for ``dispatch``)."""
        client = connect(self.settings.redis_url, check=True, resilient=True)
        return Broker(client, self.namespace)


pass_context = click.make_pass_decorator(Context)


def urls_in_play(argv: list[str] | None = None) -> list[str]:
    """The database and Redis URLs this process was given (environment and options),
    whose secrets no line it prints may hold, whatever a driver put in its message."""
    argv = sys.argv[1:] if argv is None else argv
    urls = [os.environ.get(name, "") for name in ("BRIDGE_DATABASE_URL", "BRIDGE_REDIS_URL")]
    for index, arg in enumerate(argv):
        for option in ("--database-url", "--redis-url"):
            if arg == option and index + 1 < len(argv):
                urls.append(argv[index + 1])
            elif arg.startswith(option + "="):
                urls.append(arg.split("=", 1)[1])
    return [url for url in urls if url]


def scrub(text: str) -> str:
    return redact_text(text, *urls_in_play())


class ScrubSecrets(logging.Filter):
    """Every log record passes here: no secret of a configured URL is ever logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {scrub(message)}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"warning: {scrub(message)}", err=True)


def warn_all(warnings: list[str]) -> None:
    for message in warnings:
        warn(message)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": False},
    invoke_without_command=True,
    no_args_is_help=False,
)
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
@click.option(
    "--max-inputs",
    envvar="BRIDGE_MAX_INPUTS",
    show_envvar=True,
    type=int,
    help="Bytes of dependency outputs one job may carry as its handler's inputs; a fan-in"
    " over this fails at dispatch. [default: 16777216]",
)
@click.option(
    "--auto-migrate/--no-auto-migrate",
    "auto_migrate",
    envvar="BRIDGE_AUTO_MIGRATE",
    show_envvar=True,
    default=None,
    help="Upgrade an older database schema on open (under a lock); off: refuse and say"
    " to run 'bridge db upgrade'. [default: on]",
)
@click.option(
    "--retention",
    envvar="BRIDGE_RETENTION",
    show_envvar=True,
    help="The dispatcher prunes finished graphs older than this (e.g. 30d), at most"
    " once an hour. [default: off]",
)
@click.option(
    "--retention-every",
    envvar="BRIDGE_RETENTION_EVERY",
    type=float,
    hidden=True,
    help="Seconds between the dispatcher's retention passes. [default: 3600]",
)
@click.option(
    "--external-kinds",
    envvar="BRIDGE_EXTERNAL_KINDS",
    show_envvar=True,
    help="Comma-separated kinds that agents claim (never sent to RQ), besides 'external'.",
)
@click.option(
    "--claim-ttl",
    envvar="BRIDGE_CLAIM_TTL",
    show_envvar=True,
    type=float,
    help="Seconds an external task's claim lives without a heartbeat. [default: 60]",
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
    for log_handler in logging.getLogger().handlers:
        log_handler.addFilter(ScrubSecrets())
    if ctx.invoked_subcommand is None:  # plain ``bridge``: the help, not an error
        click.echo(ctx.get_help())
        ctx.exit(0)
    # Settings only the environment gives (a secret has no command-line option).
    env_only = {k: v for k, v in os.environ.items() if k in ENV_ONLY_SETTINGS}
    ctx.obj = Context(
        Settings.from_env(env_only, **options),
        create=ctx.invoked_subcommand in CREATING_COMMANDS,
    )


# ------------------------------------------------------------------------------ add

RUN_HELP = "Add the tasks as a run of this name; their ids are stored as NAME/id."

SINGLE_TASK_OPTIONS = {
    "description": "--description",
    "kind": "--kind",
    "payload": "--payload",
    "after": "--after",
    "priority": "--priority",
    "max_attempts": "--max-attempts",
    "timeout": "--timeout",
    "queue": "--queue",
    "pool": "--pool",
    "not_before": "--not-before",
    "delay": "--delay",
}
"""Options that describe one task: a graph file describes its own, so with ``--file``
they are refused rather than silently ignored."""


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
@click.option("--timeout", type=float, help="Seconds an attempt may run (fractions allowed).")
@click.option("--run", "run_name", metavar="NAME", help=RUN_HELP)
@click.option(
    "--queue",
    "task_queue",
    metavar="NAME",
    callback=lambda _ctx, param, value: _name(param, value),
    help="The RQ queue its job goes to; workers listen with --queue. [default: BRIDGE_QUEUE]",
)
@click.option(
    "--pool",
    metavar="NAME",
    callback=lambda _ctx, param, value: _name(param, value),
    help="The pool that bounds how many such tasks run at once (bridge pool set).",
)
@click.option(
    "--not-before",
    "not_before",
    metavar="TIME",
    callback=lambda _ctx, _param, value: _not_before(value),
    help="Not dispatched before this ISO 8601 time (no zone: UTC).",
)
@click.option(
    "--delay",
    metavar="DURATION",
    callback=lambda _ctx, _param, value: _delay(value),
    help="Not dispatched until this long after it is added: seconds, or 90s, 10m, 2h.",
)
@click.pass_context
def add(
    ctx: click.Context,
    task_id: str | None,
    file_path: str | None,
    description: str,
    kind: str,
    payload: str | None,
    after: tuple[str, ...],
    priority: int,
    max_attempts: int,
    timeout: float | None,
    run_name: str | None,
    task_queue: str | None,
    pool: str | None,
    not_before: str | None,
    delay: str | None,
) -> None:
    """Add one task, or a whole graph with --file (all or nothing)."""
    context = ctx.find_object(Context)
    assert context is not None
    if file_path is not None:
        if task_id is not None:
            fail("give either a task ID or --file, not both", 2)
        given = [
            flag
            for name, flag in SINGLE_TASK_OPTIONS.items()
            if ctx.get_parameter_source(_PARAMETER.get(name, name))
            is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            fail(f"{', '.join(given)} cannot be used with --file (the file describes each task)", 2)
        specs = graph.parse_graph(_read(file_path), file_path)
        if not specs:
            fail(f"{file_path} has no tasks")
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
                queue=task_queue,
                pool=pool,
                not_before=not_before,
                delay=delay,
            )
        ]
    added = add_specs(context, specs, skip_same=False, run=run_name)
    click.echo(f"added {len(added.added)} task(s)" + (f" to run {run_name!r}" if run_name else ""))


_PARAMETER = {"queue": "task_queue"}
"""Parameters of ``add`` whose Python name differs from the option's (``--queue`` is
also the group's option, the default queue)."""


def _name(param: click.Parameter, value: str | None) -> str | None:
    """A queue or pool name: it becomes part of Redis keys and log lines."""
    if value is not None and not graph.QUEUE_NAME.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} must be 1 to 100 letters, digits or _.:-", param_hint=f"'{param.opts[0]}'"
        )
    return value


def _not_before(value: str | None) -> str | None:
    if value is not None:
        try:
            graph.parse_time(value)
        except graph.GraphError:
            raise click.BadParameter(
                f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01T02:00:00Z; no zone: UTC)",
                param_hint="'--not-before'",
            ) from None
    return value


def _delay(value: str | None) -> str | None:
    if value is not None:
        try:
            graph.parse_delay(value)
        except graph.GraphError:
            raise click.BadParameter(
                f"{value!r} is not a duration (seconds, or a number with s, m, h or d:"
                " 90s, 10m, 2h)",
                param_hint="'--delay'",
            ) from None
    return value


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}")


def add_specs(
    context: Context, specs: list[graph.TaskSpec], *, skip_same: bool, run: str | None = None
) -> usecases.Added:
    result = usecases.add(context, specs, skip_same=skip_same, run=run)
    warn_all(result.warnings)
    return result


# ------------------------------------------------------------------------------ reading


def _seconds(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(
            f"{value:g} is not a number of seconds >= 0", param_hint="'--timeout'"
        )
    return value


def _status_option(value: str | None) -> TaskStatus | None:
    if value is None:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        fail(f"unknown status {value!r} (one of: {', '.join(s.value for s in TaskStatus)})", 2)


@cli.command("list")
@click.option("--status", help="Only tasks in this state.")
@click.option("--run", "run_name", metavar="NAME", help="Only the tasks of this run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_(context: Context, status: str | None, run_name: str | None, as_json: bool) -> None:
    """List tasks in the order they were added."""
    tasks = usecases.list_tasks(context, _status_option(status), run=run_name)
    if as_json:
        render.print_json([render.task_dict(t) for t in tasks])
    else:
        render.console().print(render.tasks_table(tasks))


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--traceback", "traceback", is_flag=True, help="Print the latest failure in full.")
@pass_context
def show(context: Context, task_id: str, as_json: bool, traceback: bool) -> None:
    """Show one task, and why it is in its state."""
    view = usecases.show_task(context, task_id)
    if as_json:
        data = view.to_dict()
        if traceback:
            data["traceback"] = view.traceback
        render.print_json(data)
    elif traceback:
        if view.traceback is None:
            click.echo(f"task {task_id!r} has no recorded failure")
        else:
            click.echo(view.traceback)
    else:
        render.console().print(render.task_detail(view))
        line = render.progress_line(view.task)
        if line is not None:
            click.echo(line)


@cli.command()
@click.argument("task_id", required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (one object a line with --follow)."
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@pass_context
def events(context: Context, task_id: str | None, as_json: bool, follow: bool) -> None:
    """The audit trail: every state change (of one task, or all)."""
    rows = usecases.list_events(context, task_id)
    if not follow:
        if as_json:
            render.print_json([render.event_dict(e) for e in rows])
        else:
            render.console().print(render.events_table(rows))
        return
    out = render.console()
    last = None
    try:
        while True:
            for event in rows:
                if as_json:
                    click.echo(render.json_line(render.event_dict(event)))
                else:
                    out.print(render.event_line(event), soft_wrap=True)
                last = event.id
            sys.stdout.flush()
            time.sleep(FOLLOW_EVERY)
            rows = usecases.list_events(context, task_id, after=last)
    except KeyboardInterrupt:
        sys.exit(0)


@cli.command()
@click.argument("task_id")
@click.option(
    "--attempt", type=click.IntRange(min=1), help="Only the lines of this attempt (1 is the first)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def logs(context: Context, task_id: str, attempt: int | None, as_json: bool) -> None:
    """The lines a handler logged through ctx.log, with their attempt."""
    result = usecases.task_logs(context, task_id, attempt=attempt)
    if as_json:
        render.print_json([render.log_dict(line) for line in result.lines])
        return
    for line in result.lines:
        click.echo(render.log_line(line))
    if not result.lines:
        which = "" if attempt is None else f" in attempt {attempt}"
        click.echo(f"task {task_id!r} has no log lines{which}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def slots(context: Context, as_json: bool) -> None:
    """The worker slots: which task holds each."""
    rows = usecases.list_slots(context)
    if as_json:
        render.print_json([render.slot_dict(s) for s in rows])
    else:
        render.console().print(render.slots_table(rows))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def status(context: Context, as_json: bool) -> None:
    """Is a dispatcher running, which workers are alive, and where the tasks stand."""
    result = usecases.status(context)
    if as_json:
        render.print_json(result.to_dict())
    else:
        render.console().print(render.status_view(result))
    warn_all(result.warnings)


# ------------------------------------------------------------------------------ admin


@cli.command()
@click.argument("task_id", required=False)
@click.option("--run", "run_name", metavar="NAME", help="Retry the tasks of this run.")
@click.option("--failed", is_flag=True, help="With --run: only its failed tasks.")
@pass_context
def retry(context: Context, task_id: str | None, run_name: str | None, failed: bool) -> None:
    """Put a failed or cancelled task back to available (its history is kept).

    With --run NAME: every failed and cancelled task of the run (--failed: the failed ones).
    """
    if run_name is not None:
        if task_id is not None:
            fail("give either a task ID or --run, not both", 2)
        retried = usecases.retry_run(context, run_name, failed_only=failed)
        what = "failed" if failed else "failed or cancelled"
        click.echo(f"run {run_name!r}: {len(retried.retried)} {what} task(s) available again")
        warn_all(retried.warnings)
        return
    if task_id is None:
        fail("give a task ID or --run NAME", 2)
    if failed:
        fail("--failed goes with --run NAME", 2)
    result = usecases.retry(context, task_id)
    click.echo(f"task {task_id!r} is available again")
    warn_all(result.warnings)


@cli.command()
@click.argument("task_id", required=False)
@click.option("--run", "run_name", metavar="NAME", help="Cancel every unfinished task of this run.")
@pass_context
def cancel(context: Context, task_id: str | None, run_name: str | None) -> None:
    """Cancel a task; a queued job is removed, a running one is asked to stop."""
    if run_name is not None:
        if task_id is not None:
            fail("give either a task ID or --run, not both", 2)
        cancelled = usecases.cancel_run(context, run_name)
        click.echo(f"run {run_name!r}: cancelled {len(cancelled.cancelled)} task(s)")
        warn_all(cancelled.warnings)
        return
    if task_id is None:
        fail("give a task ID or --run NAME", 2)
    result = usecases.cancel(context, task_id)
    message = f"task {task_id!r} cancelled"
    if result.job is not None:
        message += f"; {result.job}"
    click.echo(message)
    warn_all(result.warnings)


@cli.command()
@click.option("--yes", is_flag=True, help="Really delete every task.")
@pass_context
def clean(context: Context, yes: bool) -> None:
    """Delete all tasks and their history, and reset the slots."""
    if not yes:
        fail("this deletes every task and its history; add --yes to confirm", 2)
    result = usecases.clean(context)
    click.echo(f"deleted {result.deleted} task(s)")
    warn_all(result.warnings)


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
    broker = context.service_broker()
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
@click.option(
    "--queue",
    "queues",
    metavar="NAME",
    multiple=True,
    callback=lambda _ctx, param, values: tuple(_name(param, v) for v in values),
    help="A queue to listen to (repeatable; in this order of preference). [default: BRIDGE_QUEUE]",
)
@pass_context
def worker(
    context: Context, burst: bool, name: str | None, quiet: bool, queues: tuple[str, ...]
) -> None:
    """Run an RQ worker on the bridge queue (or the queues given with --queue)."""
    from bridge.workers.process import run_worker

    run_worker(
        context.settings,
        burst=burst,
        name=name,
        logging_level="WARNING" if quiet else "INFO",
        queues=list(dict.fromkeys(queues)) or None,
    )


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[ID]...")
@click.option("--run", "run_name", metavar="NAME", help="Wait for the tasks of this run only.")
@click.option(
    "--timeout",
    type=float,
    callback=lambda _ctx, _param, value: _seconds(value),
    help="Give up after this many seconds (exit 3).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_context
def wait(
    context: Context,
    task_ids: tuple[str, ...],
    run_name: str | None,
    timeout: float | None,
    quiet: bool,
) -> None:
    """Wait for the graph (or the tasks ID..., or a run): 0 all done, 1 nothing more
    can run, 3 timeout."""
    from bridge.runner import EXIT_STUCK, EXIT_TIMEOUT

    if task_ids and run_name is not None:
        fail("give task IDs or --run, not both", 2)
    result = usecases.wait(
        context, task_ids=task_ids or None, run=run_name, timeout=timeout, show_progress=not quiet
    )
    if result.code == EXIT_STUCK:
        click.echo("stopped: nothing more can run", err=True)
        for line in result.problems:
            click.echo(f"  {line}", err=True)
    elif result.code == EXIT_TIMEOUT:
        click.echo(f"timed out after {timeout:g}s", err=True)
    sys.exit(result.code)


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
@click.option(
    "--run", "run_name", metavar="NAME", help=RUN_HELP + " Run again, it resumes that run."
)
@click.option("--serve", is_flag=True, help="Also serve the HTTP API and dashboard meanwhile.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=3335, show_default=True, help="With --serve."
)
@pass_context
def run(
    context: Context,
    file_path: str,
    workers: int,
    private_redis: bool,
    run_name: str | None,
    serve: bool,
    port: int,
) -> None:
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
        result = add_specs(context, specs, skip_same=True, run=run_name)
        where = f" (run {run_name!r})" if run_name is not None else ""
        click.echo(f"added {len(result.added)} task(s), {len(result.skipped)} already there{where}")

    code = run_graph(
        context.settings,
        lambda: context.engine,  # opened (maybe created) only once Redis is known
        [s.id for s in (specs if run_name is None else graph.scope(specs, run_name))],
        workers,
        add=add,
        private_redis=private_redis,
        serve_port=port if serve else None,
    )
    sys.exit(code)


# ------------------------------------------------------------------------------ runs


@cli.command()
@click.argument("file_path", metavar="FILE")
@click.option("--run", "run_name", metavar="NAME", help=RUN_HELP + " [default: an automatic name]")
@pass_context
def submit(context: Context, file_path: str, run_name: str | None) -> None:
    """Add the graph in FILE as a new run and print the run's name (does not wait).

    Without --run the tasks keep their ids and the run gets an automatic name.
    """
    specs = graph.parse_graph(_read(file_path), file_path)
    if not specs:
        fail(f"{file_path} has no tasks")
    result = add_specs(context, specs, skip_same=False, run=run_name)
    click.echo(result.run)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def runs(context: Context, as_json: bool) -> None:
    """List the runs: name, state (running, done, failed, cancelled, empty), counts."""
    views = usecases.list_runs(context)
    if as_json:
        render.print_json([v.to_dict() for v in views])
    else:
        render.console().print(render.runs_table(views))


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[ID]...")
@click.option("--run", "run_name", metavar="NAME", help="Delete this finished run, whole.")
@click.option("--force", is_flag=True, help="With --run: cancel what is unfinished first.")
@pass_context
def delete(context: Context, task_ids: tuple[str, ...], run_name: str | None, force: bool) -> None:
    """Delete tasks (with their events, logs and edges), all or none.

    ID...: tasks that are finished or not yet started, that nothing unfinished depends on.
    --run NAME: a finished run (nothing of it in flight or able to run), or with --force
    any run (its unfinished tasks are cancelled first), and the run itself.
    """
    if run_name is not None:
        if task_ids:
            fail("give task IDs or --run, not both", 2)
        result = usecases.delete_run(context, run_name, force=force)
        extra = f" (cancelled {len(result.cancelled)} first)" if result.cancelled else ""
        click.echo(f"deleted run {run_name!r}: {len(result.deleted)} task(s){extra}")
    else:
        if not task_ids:
            fail("give task IDs or --run NAME", 2)
        if force:
            fail("--force goes with --run NAME", 2)
        result = usecases.delete_tasks(context, list(task_ids))
        click.echo(f"deleted {len(result.deleted)} task(s)")
    warn_all(result.warnings)


# ------------------------------------------------------------------------------ schedule


@cli.group("schedule")
def schedule() -> None:
    """Graphs submitted as a new run at each cron due time (by the dispatcher)."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", "cron", required=True, metavar="EXPR", help="e.g. '0 2 * * *'.")
@click.option(
    "--file",
    "file_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="A JSON list of task objects (kept now; later edits to the file do not count).",
)
@click.option(
    "--timezone", "zone", default="UTC", show_default=True, help="IANA zone the cron reads in."
)
@click.option("--catch-up", is_flag=True, help="Create every missed run, not just the latest.")
@pass_context
def schedule_add(
    context: Context, name: str, cron: str, file_path: str, zone: str, catch_up: bool
) -> None:
    """Add a schedule NAME: the dispatcher creates a run of FILE's graph at each due time."""
    context.create = True
    result = usecases.schedule_add(
        context,
        name,
        cron,
        _read(file_path),
        timezone=zone,
        catch_up=catch_up,
        source=file_path,
    )
    view = result.schedule
    click.echo(
        f"schedule {name!r} added: {view.tasks} task(s), next due"
        f" {view.next_due[:16]} UTC ({render.zoned_time(view.next_due, view.timezone)})"
    )
    warn_all(result.warnings)


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def schedule_list(context: Context, as_json: bool) -> None:
    """List schedules with their next due time (UTC and local) and last due time."""
    views = usecases.schedule_list(context)
    if as_json:
        render.print_json([v.to_dict() for v in views])
    else:
        render.console().print(render.schedules_table(views))


@schedule.command("remove")
@click.argument("name")
@pass_context
def schedule_remove(context: Context, name: str) -> None:
    """Remove schedule NAME (the runs it created stay)."""
    result = usecases.schedule_remove(context, name)
    click.echo(f"schedule {name!r} removed")
    warn_all(result.warnings)


# ------------------------------------------------------------------------------- db


@cli.group("db")
def db() -> None:
    """The database itself: schema migrations, adoption, backup and restore, pruning."""


@db.command("upgrade")
@click.option("--sql", is_flag=True, help="Print the SQL for this database instead of running it.")
@pass_context
def db_upgrade(context: Context, sql: bool) -> None:
    """Bring the database schema to this bridge's revision (under a lock)."""
    result = usecases.db_upgrade(context, sql=sql)
    if sql:
        if result.sql:
            click.echo(result.sql, nl=False)
        else:
            click.echo(f"-- database schema is at {result.after} (head): nothing to do")
    elif not result.changed:
        click.echo(f"database schema is at {result.after} (head): nothing to do")
    elif result.before == "empty":
        click.echo(f"created the database schema at {result.after}")
    else:
        click.echo(f"upgraded the database schema from {result.before} to {result.after}")


@db.command("current")
@pass_context
def db_current(context: Context) -> None:
    """The database's schema revision, and whether it is this bridge's."""
    result = usecases.db_current(context)
    if result.is_head:
        click.echo(f"{result.revision} (head)")
    elif result.kind == "newer":
        click.echo(
            f"{result.revision} (written by a newer bridge: this one knows up to {result.head})"
        )
    else:
        click.echo(
            f"{result.revision} (not head: this bridge needs {result.head};"
            " run 'bridge db upgrade')"
        )


@db.command("history")
@pass_context
def db_history(context: Context) -> None:
    """The schema revisions this bridge ships, newest first."""
    result = usecases.db_history(context)
    for revision in result.revisions:
        marks = [
            m
            for m, on in (
                ("head", revision.is_head),
                ("current", revision.revision == result.current),
            )
            if on
        ]
        label = f"{revision.down_revision or '<base>'} -> {revision.revision}"
        shown = f"{label} ({', '.join(marks)})" if marks else label
        click.echo(f"{shown}: {revision.doc.splitlines()[0] if revision.doc else ''}")


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {table}" for table, n in counts.items())


@db.command("backup")
@click.argument("path")
@pass_context
def db_backup(context: Context, path: str) -> None:
    """Write a consistent backup of the database to PATH (gzip JSON Lines) while the
    dispatcher and workers keep running. Leases are not included."""
    result = usecases.backup(context, path)
    click.echo(f"backed up to {path}: {_counts_text(result.counts)}")
    warn_all(result.warnings)


@db.command("restore")
@click.argument("path")
@click.option("--replace", is_flag=True, help="Delete every task of the target first.")
@click.option("--yes", is_flag=True, help="Confirm --replace.")
@click.option("--merge", is_flag=True, help="Add the file's tasks to a live database.")
@pass_context
def db_restore(context: Context, path: str, replace: bool, yes: bool, merge: bool) -> None:
    """Load a backup (or a prune archive) from PATH into the database, all or nothing.

    The target must hold no task, unless --replace --yes (its tasks, history and slots
    are deleted in the same transaction) or --merge (the file's tasks are added; an id
    already there refuses the whole merge). Works into SQLite or PostgreSQL alike.
    """
    if replace and merge:
        fail("--replace and --merge cannot be used together", 2)
    if replace and not yes:
        fail("--replace deletes every task of the target first; add --yes to confirm", 2)
    context.create = True  # restoring is how a new database (e.g. PostgreSQL) is filled
    result = usecases.restore(context, path, replace=replace, merge=merge)
    verb = "merged" if merge else "restored"
    click.echo(
        f"{verb} {path} (backup of {result.created_at}, schema {result.schema}):"
        f" {_counts_text(result.counts)}"
    )
    warn_all(result.warnings)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from bridge.settings import SettingsError, parse_duration

    try:
        parse_duration(value)
    except SettingsError as exc:
        raise click.BadParameter(
            str(exc).removeprefix("bad duration "), param_hint="'--older-than'"
        ) from None
    return value


@db.command("prune")
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    callback=_duration,
    help="Prune finished graphs whose newest completion is older than this (90m, 12h, 30d).",
)
@click.option(
    "--archive",
    "archive",
    type=click.Path(dir_okay=False),
    help="First write the pruned rows to this file (fsynced); if that fails, nothing is deleted.",
)
@click.option("--dry-run", is_flag=True, help="Print what would go; change nothing.")
@pass_context
def db_prune(context: Context, older_than: str, archive: str | None, dry_run: bool) -> None:
    """Delete finished graphs (tasks, edges, events) older than --older-than.

    A task goes only with its whole graph (every task linked to it by dependencies,
    either way), and only when all of it is done, failed or cancelled and its newest
    completion is older than DURATION.
    """
    result = usecases.prune(context, older_than, archive=archive, dry_run=dry_run)
    for line in render_prune(result):
        click.echo(line)
    if archive is not None and result.archived is None:
        click.echo(f"no archive written to {archive} (nothing was deleted)")
    warn_all(result.warnings)


def render_prune(result: Any) -> list[str]:
    """The lines ``db prune`` prints (ids: the oldest first, then a count of the rest)."""
    if not result.planned:
        return [f"nothing to prune: no finished graph older than {result.older_than}"]
    shown = ", ".join(result.sample)
    if result.planned > len(result.sample):
        shown += f", ... ({result.planned - len(result.sample)} more)"
    graphs = f"{result.planned} task(s) in {result.components} finished graph(s)"
    if result.dry_run:
        return [
            f"would prune {graphs} older than {result.older_than}"
            f" (completed before {result.cutoff[:19]} UTC): {shown}",
            "dry run: nothing was changed",
        ]
    lines = []
    if result.archive is not None and result.archived is not None:
        counts = ", ".join(f"{n} {table}" for table, n in result.archived.items())
        lines.append(f"archived {counts} to {result.archive}")
    done = "" if result.deleted == result.planned else f"{result.deleted} of "
    lines.append(f"pruned {done}{graphs} older than {result.older_than}: {shown}")
    if result.kept:
        kept = ", ".join(result.kept[:10]) + (" ..." if len(result.kept) > 10 else "")
        lines.append(
            f"kept {len(result.kept)} task(s) whose graph changed while pruning"
            f" (still in the database): {kept}"
        )
    return lines


@db.command()
@click.option("--kind", required=True, help="The handler that runs the adopted tasks (their kind).")
@click.option("--yes", is_flag=True, help="Adopt without asking.")
@pass_context
def adopt(context: Context, kind: str, yes: bool) -> None:
    """Make a Task Coordinator database a bridge one, in place (a copy is kept).

    Every task and every value is kept; dependencies become edges; working and claimed
    tasks become available and run again; tasks whose dependencies bridge cannot honour
    (unknown id, cycle, malformed JSON) are kept but blocked, and listed.
    """
    plan = usecases.adoption_plan(context)
    if not yes:
        if not sys.stdin.isatty():
            fail(
                f"adopting converts {plan.path} in place (a copy is kept);"
                " add --yes to confirm when not on a terminal",
                2,
            )
        click.echo(
            f"{plan.path}: a Task Coordinator database with {plan.total} task(s)"
            f" ({len(plan.reopened)} to re-open, {len(plan.blocked)} to keep blocked)"
        )
        if not click.confirm(
            f"Convert it in place for bridge, tasks of kind {kind!r}? A copy is kept beside it"
        ):
            fail("not adopted; the file is unchanged")
    result = usecases.adopt(context, kind)
    for line in result.summary():
        click.echo(line)
    warn_all(result.warnings)


# ------------------------------------------------------------------------------ pool


@cli.group("pool")
def pool() -> None:
    """Pools: how many tasks naming a pool (add --pool NAME) may be in flight at once."""


@pool.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("slots", type=int)
@pass_context
def pool_set(context: Context, name: str, slots: int) -> None:
    """Create pool NAME with SLOTS slots, or change its slots (0 holds its tasks back)."""
    context.create = True  # pools may be set up before the first task is added
    result = usecases.pool_set(context, name, slots)
    verb = "created" if result.created else "set"
    click.echo(f"pool {name!r} {verb}: {slots} slot(s)")
    warn_all(result.warnings)


@pool.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def pool_list(context: Context, as_json: bool) -> None:
    """Every pool: its slots, its tasks in flight and its ready tasks waiting."""
    result = usecases.pool_list(context)
    if as_json:
        render.print_json(result.to_list())
    else:
        render.console().print(render.pools_table(result.pools))
    warn_all(result.warnings)


@pool.command("delete")
@click.argument("name")
@pass_context
def pool_delete(context: Context, name: str) -> None:
    """Delete pool NAME; refused while tasks of it are in flight. Its other tasks wait
    until a pool of that name is set again."""
    result = usecases.pool_delete(context, name)
    click.echo(f"pool {name!r} deleted")
    warn_all(result.warnings)


# ------------------------------------------------------------------------------ external tasks

EXIT_NOTHING_TO_CLAIM = 3
"""``bridge claim`` found no ready external task: not an error, but a script's loop
must tell it from a claim (``while ! bridge claim ...; do sleep 5; done``)."""


def _attempt_option(function: Any) -> Any:
    return click.option(
        "--attempt",
        type=click.IntRange(min=1),
        required=True,
        help="The attempt 'bridge claim' gave (fences off stale and duplicate reports).",
    )(function)


@cli.command()
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    help="Claim only this kind (repeatable). [default: all external]",
)
@click.option("--worker", required=True, help="Who claims it (shown as the task's worker).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: task, attempt, lease_expires_at."
)
@pass_context
def claim(context: Context, kinds: tuple[str, ...], worker: str, as_json: bool) -> None:
    """Claim a ready external task for an agent or script (exit 3: nothing to claim).

    The task becomes working on a new attempt; keep it with 'bridge heartbeat' before its
    lease lapses (BRIDGE_CLAIM_TTL), then 'bridge complete' or 'bridge fail' it.
    """
    claimed = usecases.claim(context, worker=worker, kinds=list(kinds) or None)
    if claimed is None:
        click.echo("nothing to claim: no ready external task", err=True)
        sys.exit(EXIT_NOTHING_TO_CLAIM)
    if as_json:
        render.print_json(claimed.to_dict())
        return
    task = claimed.task
    click.echo(f"claimed task {task['id']!r} attempt {claimed.attempt} (kind {task['kind']})")
    click.echo(f"lease until {claimed.lease_expires_at[:19]} UTC")
    if task["description"]:
        click.echo(f"description: {task['description']}")
    click.echo(f"payload: {render.json_line(task['payload'])}")


def _json_option(text: str, option: str) -> Any:
    import json

    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        fail(f"{option} is not valid JSON: {getattr(exc, 'msg', 'nested too deeply')}", 2)


@cli.command()
@click.argument("task_id")
@_attempt_option
@pass_context
def heartbeat(context: Context, task_id: str, attempt: int) -> None:
    """Keep a claimed external task's lease alive for another BRIDGE_CLAIM_TTL."""
    expires = usecases.heartbeat(context, task_id, attempt)
    click.echo(f"task {task_id!r} attempt {attempt}: lease until {expires[:19]} UTC")


@cli.command()
@click.argument("task_id")
@_attempt_option
@click.option("--output", "output", help="The result, a JSON value. [default: null]")
@pass_context
def complete(context: Context, task_id: str, attempt: int, output: str | None) -> None:
    """Finish a claimed external task as done (a stale or repeated attempt is refused)."""
    value = None if output is None else _json_option(output, "--output")
    task = usecases.complete(context, task_id, attempt, value)
    click.echo(f"task {task_id!r} attempt {attempt}: {task['status']}")


@cli.command("fail")
@click.argument("task_id")
@_attempt_option
@click.option("--error", required=True, help="What went wrong (one line is best).")
@pass_context
def fail_(context: Context, task_id: str, attempt: int, error: str) -> None:
    """Fail a claimed external task: retried if attempts remain (a stale attempt is refused)."""
    task = usecases.fail(context, task_id, attempt, error)
    if task["status"] == "available":
        click.echo(f"task {task_id!r} attempt {attempt} failed; {task['note'] or 'will retry'}")
    else:
        click.echo(f"task {task_id!r} attempt {attempt} failed; no attempts left")


# ------------------------------------------------------------------------------ web


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=3335, show_default=True)
@pass_context
def serve(context: Context, host: str, port: int) -> None:
    """Serve the HTTP API (and dashboard) until SIGINT/SIGTERM.

    Without BRIDGE_API_TOKEN it listens on loopback only; with it, every route but
    /healthz and /login asks for the token.
    """
    from bridge.web.serving import check_host, check_port, serve, url_of

    check_host(host, token=context.settings.api_token)
    check_port(host, port)
    context.engine  # noqa: B018 (a database it cannot open: one error line, nothing before it)
    click.echo(f"serving {url_of(host, port)}", err=True)
    serve(context, host=host, port=port)


@cli.command("graph")
@click.argument("task_id", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "json"]),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart, Graphviz DOT, or JSON nodes and edges.",
)
@pass_context
def graph_(context: Context, task_id: str | None, fmt: str) -> None:
    """Print the graph TASK_ID belongs to (every task without one), states as colours."""
    from bridge import graphtext

    drawn = usecases.task_graph(context, task_id)
    if fmt == "json":
        render.print_json(drawn.to_dict())
    elif fmt == "dot":
        click.echo(graphtext.dot(drawn.nodes, drawn.edges), nl=False)
    else:
        click.echo(graphtext.mermaid(drawn.nodes, drawn.edges), nl=False)
    if drawn.cut:
        warn(f"only the first {usecases.GRAPH_MAX} tasks are drawn")


# ------------------------------------------------------------------------------ mcp


@cli.command()
@pass_context
def mcp(context: Context) -> None:
    """Serve bridge's MCP tools on stdin/stdout, for an MCP client (an AI agent)."""
    from bridge.mcp_server import run_stdio

    run_stdio(context)


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
