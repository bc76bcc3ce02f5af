"""``bridge worker``: a bridge RQ worker on the bridge queue, JSON jobs only."""

from bridge.broker import connect
from bridge.broker.working import serve_jobs
from bridge.settings import Settings
from bridge.workers.registry import load_modules


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    name: str | None = None,
    logging_level: str = "INFO",
    max_jobs: int | None = None,
) -> bool:
    """Run until stopped (SIGTERM/SIGINT: warm shutdown, the current job finishes).

    Handler modules are imported first so a bad ``BRIDGE_HANDLERS`` fails now,
    not when the first task arrives. Returns whether any job ran.
    """
    load_modules(settings.handlers)
    client = connect(settings.redis_url, resilient=True)
    return serve_jobs(
        client,
        [settings.queue],
        mode=settings.worker_class,
        name=name,
        burst=burst,
        logging_level=logging_level,
        max_jobs=max_jobs,
    )
