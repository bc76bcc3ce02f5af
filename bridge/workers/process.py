"""``bridge worker``: an RQ worker on the bridge queue, JSON jobs only."""

import logging
import time

from redis.exceptions import RedisError
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from bridge.broker import connect
from bridge.settings import Settings
from bridge.workers.registry import load_modules

log = logging.getLogger("bridge.worker")

RESTART_AFTER = 2.0

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
    client = connect(settings.redis_url, resilient=True)
    worker_class = WORKER_CLASSES[settings.worker_class]
    while True:
        worker = worker_class(
            [settings.queue],
            connection=client,
            name=name,
            serializer=JSONSerializer,
        )
        try:
            return worker.work(burst=burst, logging_level=logging_level, max_jobs=max_jobs)
        except RedisError as exc:
            # Redis went away for longer than the client's retries: start over, as RQ's
            # own loop would for a dequeue; the dispatcher re-sends what was lost.
            log.warning("lost Redis (%s); starting the worker again in %.0fs", exc, RESTART_AFTER)
            time.sleep(RESTART_AFTER)
            try:
                worker.register_death()  # free the name for the new registration
            except RedisError:
                pass
