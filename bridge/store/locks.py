"""Transaction locks PostgreSQL needs where SQLite already serializes every writer.

SQLite runs one write transaction at a time (``BEGIN IMMEDIATE``). PostgreSQL, at READ
COMMITTED, runs them side by side, and each statement sees only what was committed when
it began: a rule that reads in one transaction and writes in another can then miss the
other's uncommitted work. Such rules take an advisory lock here, held until their
transaction ends.
"""

from sqlalchemy import text
from sqlmodel import Session

GRAPH_LOCK = 0x6272_6964_6765_0001
"""Advisory lock key (``'bridge'`` and 1) of the dependency counts (``pending_deps``).
Advisory locks are per database, so two bridge databases on one server never share it."""


def lock_dependency_counts(session: Session) -> None:
    """Serialize adding tasks with applying outcomes, on PostgreSQL (a no-op on SQLite).

    ``add_tasks`` counts a new task's unfinished dependencies from their stored status;
    applying a success decrements the count of every dependent found through
    ``task_edges``. Side by side, the add may read a dependency as still working while
    the success, not yet committed, decrements the dependents it can see, which do not
    include the new, uncommitted edge: the new task would wait forever for a dependency
    that is done. Taken first in both, this lock makes one wait for the other's commit.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": GRAPH_LOCK}
        )
