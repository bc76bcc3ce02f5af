"""``bridge worker``: a bridge RQ worker on the bridge queue (or the named ones), JSON jobs only."""

import importlib

from bridge.broker import connect
from bridge.broker.working import serve_jobs
from bridge.errors import BridgeError
from bridge.messages import JOB_FUNCTION
from bridge.settings import Settings, redact_url
from bridge.workers.registry import load_modules

_NAME_TAKEN = "There exists an active worker named"  # RQ's ValueError at register_birth


class WorkerNameTaken(BridgeError):
    """``--name`` names a worker that is registered alive on this Redis."""


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    name: str | None = None,
    logging_level: str = "INFO",
    max_jobs: int | None = None,
    queues: list[str] | None = None,
) -> bool:
    """Run until stopped (SIGTERM/SIGINT: warm shutdown, the current job finishes).

    Handler modules are imported first so a bad ``BRIDGE_HANDLERS`` fails now,
    not when the first task arrives. ``queues`` (default: the ``queue`` setting) are
    listened to in order: a job of the first one with work is taken first. Returns
    whether any job ran.
    """
    load_modules(settings.handlers)
    # The job's entry point, imported here once: a forking worker's work horse would
    # otherwise import it (and what it imports) anew for every job, about 2 ms each.
    importlib.import_module(JOB_FUNCTION.rpartition(".")[0])
    client = connect(settings.redis_url, resilient=True)
    try:
        return serve_jobs(
            client,
            queues or [settings.queue],
            mode=settings.worker_class,
            name=name,
            burst=burst,
            logging_level=logging_level,
            max_jobs=max_jobs,
        )
    except ValueError as exc:
        if name is None or not str(exc).startswith(_NAME_TAKEN):
            raise
        raise WorkerNameTaken(
            f"a worker named {name!r} is already running on {redact_url(settings.redis_url)}"
        ) from None
