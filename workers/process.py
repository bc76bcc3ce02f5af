"""``bridge worker``: an RQ worker on the bridge queue, JSON jobs only."""

from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from bridge.broker import connect
from bridge.settings import Settings
from workers.registry import load_modules

WORKER_CLASSES: dict[str, type[Worker] | type[SimpleWorker]] = {
    "fork": Worker,
    "simple": SimpleWorker,
}


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
    client = connect(settings.redis_url)
    worker_class = WORKER_CLASSES[settings.worker_class]
    worker = worker_class(
        [settings.queue],
        connection=client,
        name=name,
        serializer=JSONSerializer,
    )
    return worker.work(burst=burst, logging_level=logging_level, max_jobs=max_jobs)
