"""The Redis keys bridge writes, all under one database's namespace.

``bridge:<ns>:...`` where ``ns`` comes from the database's identity (its
``bridge_meta`` row): two databases that share a Redis never read each other's
reports or marks. Job ids carry the namespace too (``messages.job_id_for``).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str

    @property
    def prefix(self) -> str:
        return f"bridge:{self.namespace}"

    @property
    def reports(self) -> str:
        """The stream workers append reports to, read by the dispatcher's consumer group."""
        return f"{self.prefix}:reports"

    def alive(self, job_id: str) -> str:
        """Renewed by the worker process that watches the job; its expiry means that
        worker is dead or paused past the heartbeat limit. Value: ``mode:worker``."""
        return f"{self.prefix}:alive:{job_id}"

    @property
    def dispatcher(self) -> str:
        """Which dispatcher serves this namespace now (value: its name). Two live holders
        mean two database files with one identity: a copy."""
        return f"{self.prefix}:dispatcher"

    def fence(self, job_id: str) -> str:
        """Set when an attempt is superseded or cancelled: a worker never starts a job
        that has it, and stops a running one at its next heartbeat."""
        return f"{self.prefix}:fence:{job_id}"


def queue_owner(queue: str) -> str:
    """Which database's dispatcher serves an RQ queue (value: its namespace)."""
    return f"bridge:owner:{queue}"
