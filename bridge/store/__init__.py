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
from bridge.store.claims import Claim, claim_external, expire_claims, renew_claim
from bridge.store.deleting import DeletedTasks, delete_tasks
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
from bridge.store.pools import (
    PoolError,
    PoolInfo,
    delete_pool,
    list_pools,
    missing_pools,
    pool_info,
    set_pool,
)
from bridge.store.preflight import is_task_coordinator
from bridge.store.queues import queue_backlog
from bridge.store.reports import Applied, apply_reports
from bridge.store.runs import (
    RUNS,
    RunCounts,
    auto_run_name,
    create_run,
    get_run,
    list_runs,
    require_run,
    run_exists,
    run_task_ids,
    run_tasks_of_status,
)
from bridge.store.schedules import (
    SCHEDULES,
    Fired,
    add_schedule,
    due_schedules,
    fire_schedule,
    get_schedule,
    list_schedules,
    next_schedule_due,
    remove_schedule,
)
from bridge.store.schema import namespace, take_tokens
from bridge.store.tables import EDGES, EVENTS, LEASES, LOGS, SLOTS, TASKS
from bridge.store.tasks import (
    AddResult,
    Progress,
    add_tasks,
    declared_dependencies,
    dependency_states,
    dependents_blocked_by,
    get_task,
    list_events,
    list_logs,
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
    "LOGS",
    "SLOTS",
    "TASKS",
    "AddResult",
    "Applied",
    "Cancelled",
    "Claim",
    "claim_external",
    "expire_claims",
    "renew_claim",
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
    "RunCounts",
    "DeletedTasks",
    "delete_tasks",
    "list_runs",
    "require_run",
    "run_task_ids",
    "run_tasks_of_status",
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
    "list_logs",
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
    # ---- route: pools and queues
    "PoolError",
    "PoolInfo",
    "delete_pool",
    "list_pools",
    "missing_pools",
    "pool_info",
    "queue_backlog",
    "set_pool",
    "SCHEDULES",
    "Fired",
    "add_schedule",
    "due_schedules",
    "fire_schedule",
    "get_schedule",
    "list_schedules",
    "next_schedule_due",
    "remove_schedule",
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
