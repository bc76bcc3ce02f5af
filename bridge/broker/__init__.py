"""The broker: the only code that talks to Redis and RQ.

``dispatching`` is the dispatcher's side (jobs out, job states, fencing marks,
reports in), ``working`` the worker's (bridge's own RQ job and worker classes,
heartbeats, reports out), ``keys`` the namespaced Redis keys both use.
Redis's errors leave this package only as ``BrokerError``/``BrokerUnavailable``.
"""

from bridge.broker.client import BrokerError, BrokerUnavailable, connect
from bridge.broker.dispatching import (
    Broker,
    CancelOutcome,
    Incoming,
    Withdrawal,
    WorkerInfo,
    nudge_quietly,
)

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "CancelOutcome",
    "Incoming",
    "Withdrawal",
    "WorkerInfo",
    "connect",
    "nudge_quietly",
]
