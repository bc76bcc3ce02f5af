"""The dispatcher's own pruning (``BRIDGE_RETENTION``), paced so dispatching goes on.

The rule and the SQL are ``bridge.store.prune``'s, the same as ``bridge db prune``.
A pass starts when the dispatcher is up and then every ``retention_every`` seconds
(an hour by default). Its plan (reading every finished task and every edge) is made
in a thread on its own connection, so the dispatch loop does not wait for it; the
loop then deletes one batch (at most ``PRUNE_CHUNK`` tasks, one transaction) between
ticks, and waits after each so retention takes about ``RETENTION_DUTY`` of its time.
"""

import logging
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone

from bridge import store
from bridge.defaults import RETENTION_DUTY, RETENTION_PAUSE_MIN
from bridge.store import prune as pruning

log = logging.getLogger("bridge.retention")


class Retention:
    """One dispatcher's retention passes; ``step`` is called between ticks."""

    def __init__(self, engine: store.Engine, older_than: float, every: float) -> None:
        self.engine = engine
        self.older_than = older_than
        self.every = every
        self.pruned = 0
        """Tasks deleted since the dispatcher started."""
        self._next_pass = time.monotonic()
        self._next_batch = 0.0
        self._planning: threading.Thread | None = None
        self._planned: pruning.PrunePlan | None = None
        self._plan: pruning.PrunePlan | None = None
        self._batches: deque[list[pruning.Piece]] = deque()
        self._skip: set[int] = set()
        self._pass_deleted = 0

    @property
    def busy(self) -> bool:
        """Whether a pass is being planned or has batches left."""
        return self._planning is not None or bool(self._batches)

    def step(self) -> int:
        """Do the next bit of work if it is due; returns how many tasks it deleted.

        A database error while deleting propagates (the dispatcher backs off as for any
        other); the batch is tried again later, re-checked as always.
        """
        moment = time.monotonic()
        if self._planning is not None:
            if self._planning.is_alive():
                return 0
            self._planning = None
            self._start_deleting()
        if self._batches:
            if moment < self._next_batch or self._plan is None:
                return 0
            batch = self._batches[0]
            with store.writing(self.engine) as session:
                result = pruning.prune_batch(
                    session=session, batch=batch, cutoff=self._plan.cutoff, skip=self._skip
                )
            self._batches.popleft()
            self._skip |= result.kept
            self._pass_deleted += len(result.deleted)
            self.pruned += len(result.deleted)
            took = time.monotonic() - moment
            self._next_batch = time.monotonic() + max(
                RETENTION_PAUSE_MIN, took * (1 / RETENTION_DUTY - 1)
            )
            if not self._batches:
                log.info(
                    "retention: pruned %d task(s) of %d finished graph(s) completed before %s%s",
                    self._pass_deleted,
                    len(self._plan.components),
                    self._plan.cutoff[:19],
                    f"; kept {len(self._skip)} graph(s) that changed meanwhile"
                    if self._skip
                    else "",
                )
            return len(result.deleted)
        if moment >= self._next_pass:
            self._next_pass = moment + self.every
            self._planned = None
            self._planning = threading.Thread(
                target=self._make_plan, name="bridge-retention", daemon=True
            )
            self._planning.start()
        return 0

    def _make_plan(self) -> None:
        cutoff = store.stamp(datetime.now(timezone.utc) - timedelta(seconds=self.older_than))
        try:
            with store.reading(self.engine) as session:
                self._planned = pruning.plan_prune(session=session, cutoff=cutoff)
        except Exception:  # noqa: BLE001 - a failed pass is logged; the next one tries again
            log.exception("retention: could not plan a prune; trying again next pass")

    def _start_deleting(self) -> None:
        plan, self._planned = self._planned, None
        if plan is None or not plan.components:
            return
        log.info(
            "retention: %d task(s) in %d finished graph(s) to prune, %d batch(es)",
            len(plan.task_ids),
            len(plan.components),
            len(plan.batches),
        )
        self._plan = plan
        self._batches = deque(plan.batches)
        self._skip = set()
        self._pass_deleted = 0
