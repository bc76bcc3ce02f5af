"""``bridge worker``: an RQ worker on the bridge queue, JSON jobs only."""

import logging
import time

from redis.exceptions import RedisError
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from bridge.broker import connect
from bridge.errors import BridgeError
from bridge.settings import Settings, redact_url
from bridge.workers.registry import load_modules

log = logging.getLogger("bridge.worker")

RESTART_AFTER = 2.0
_NAME_TAKEN = "There exists an active worker named"  # RQ's ValueError at register_birth


class WorkerNameTaken(BridgeError):
    """``--name`` names a worker that is registered alive on this Redis."""


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
        except ValueError as exc:
            if not str(exc).startswith(_NAME_TAKEN):
                raise
            raise WorkerNameTaken(
                f"a worker named {worker.name!r} is already running on"
                f" {redact_url(settings.redis_url)}"
            ) from None
        except RedisError as exc:
            if getattr(worker, "_shutdown_requested_date", None) is not None:
                # Asked to stop (SIGTERM/SIGINT) and Redis is gone too: there is no one
                # to start over for, and an orphan must not retry forever.
                log.warning("lost Redis (%s) while stopping; exiting", exc)
                return False
            # Redis went away for longer than the client's retries: start over, as RQ's
            # own loop would for a dequeue; the dispatcher re-sends what was lost.
            log.warning("lost Redis (%s); starting the worker again in %.0fs", exc, RESTART_AFTER)
            time.sleep(RESTART_AFTER)
            try:
                worker.register_death()  # free the name for the new registration
            except RedisError:
                pass
