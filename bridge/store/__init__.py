"""The store: all SQL lives in this package, the only code that talks to the database.

Every state change is a guarded compare-and-set (``UPDATE ... WHERE status = ...
AND job_id = ...`` for reports, ``AND attempts = ...`` for dispatches) in the same
transaction as its ``task_events`` row. Hot
paths use SQLAlchemy Core on the mapped tables, not ORM object loads. Callers
use this package's names; the modules inside are split by concern.
"""

from sqlalchemy.engine import Engine
from sqlmodel import Session

from bridge.messages import Dispatch
from bridge.states import TaskStatus
from bridge.store.admin import Cancelled, Cleaned, cancel_task, clean, retry_task
from bridge.store.dispatching import (
    claim_ready,
    in_flight,
    next_wakeup,
    redispatch,
    reset_slots,
)
from bridge.store.engine import (
    StoreError,
    TaskStateError,
    now,
    open_engine,
    reading,
    stamp,
    writing,
)
from bridge.store.errors import UnknownTask
from bridge.store.leases import (
    LeaseInfo,
    acquire_lease,
    holds_lease,
    lease_clock,
    lease_holder,
    list_leases,
    release_lease,
)
from bridge.store.preflight import is_task_coordinator
from bridge.store.reports import Applied, apply_reports
from bridge.store.runs import RUNS, auto_run_name, create_run, get_run, run_exists
from bridge.store.schema import namespace, take_tokens
from bridge.store.tables import EDGES, EVENTS, LEASES, SLOTS, TASKS
from bridge.store.tasks import (
    AddResult,
    Progress,
    add_tasks,
    declared_dependencies,
    dependency_states,
    dependents_blocked_by,
    get_task,
    list_events,
    list_slots,
    list_tasks,
    progress,
    require_task,
    spec_of,
    task_dict,
)
from bridge.store.views import (
    counts_at,
    dependents,
    events_after,
    graph_of,
    in_flight_count,
    last_event_id,
    page_events,
    page_tasks,
    ping,
    recent_timings,
    run_count,
    tasks_of_jobs,
)

__all__ = [
    "is_task_coordinator",
    "EDGES",
    "EVENTS",
    "LEASES",
    "SLOTS",
    "TASKS",
    "AddResult",
    "Applied",
    "Cancelled",
    "Cleaned",
    "Dispatch",
    "Engine",
    "LeaseInfo",
    "Progress",
    "Session",
    "StoreError",
    "TaskStateError",
    "TaskStatus",
    "acquire_lease",
    "add_tasks",
    "auto_run_name",
    "create_run",
    "get_run",
    "run_exists",
    "RUNS",
    "apply_reports",
    "cancel_task",
    "claim_ready",
    "clean",
    "declared_dependencies",
    "dependency_states",
    "dependents_blocked_by",
    "get_task",
    "holds_lease",
    "in_flight",
    "lease_clock",
    "lease_holder",
    "list_events",
    "list_leases",
    "list_slots",
    "list_tasks",
    "namespace",
    "next_wakeup",
    "now",
    "open_engine",
    "progress",
    "reading",
    "redispatch",
    "release_lease",
    "require_task",
    "reset_slots",
    "retry_task",
    "spec_of",
    "stamp",
    "take_tokens",
    "task_dict",
    "writing",
    "UnknownTask",
    "dependents",
    "events_after",
    "graph_of",
    "in_flight_count",
    "last_event_id",
    "page_events",
    "page_tasks",
    "ping",
    "recent_timings",
    "run_count",
    "tasks_of_jobs",
    "counts_at",
]
