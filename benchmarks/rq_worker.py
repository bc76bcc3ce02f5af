"""A plain RQ worker built exactly like ``bridge worker`` builds its own.

Same client options as ``bridge.broker.connect``, JSON serializer, the same
worker class, ``work(logging_level="WARNING")`` as ``bridge worker --quiet``:
the only difference left is what the job does (bridge's ``run_task`` versus a
bare ``noop``).

Usage: ``python rq_worker.py REDIS_URL QUEUE simple|fork``
"""

import sys

import redis
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

CLASSES = {"simple": SimpleWorker, "fork": Worker}


def main() -> None:
    url, queue, kind = sys.argv[1:4]
    client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    client.ping()
    worker = CLASSES[kind]([queue], connection=client, serializer=JSONSerializer)
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    main()
