"""Every timing default in one place, each with the reason for its value.

The dispatcher, the workers, ``bridge run`` and the recovery rules read these;
the README's guarantees table quotes them. Change one here and its bound in
the README changes with it.
"""

# ---------------------------------------------------------------- worker side

HEARTBEAT_EVERY = 2.0
"""Seconds between heartbeats of a running job. They come from the worker process
that watches the job (the forking worker's parent), never from the job itself, so a
handler that holds the GIL cannot starve them."""
HEARTBEAT_TTL = 10
"""Seconds a heartbeat lives: five missed beats before the dispatcher may presume the
worker dead. A worker paused (SIGSTOP) longer than this is treated as lost."""
START_REPORT_DELAY = 0.1
"""Seconds a job runs before its ``started`` report is sent on its own; a shorter job
sends one report whose outcome carries its start."""
WORKER_RESTART_AFTER = 2.0
"""Seconds a worker waits before starting over after losing Redis."""
PROGRESS_EVERY = 0.5
"""At most one ``ctx.progress`` report this often per attempt; the latest is always sent
before the outcome, so what ``bridge show`` says last is what the handler said last."""
LOG_FLUSH_EVERY = 1.0
"""Seconds between sends of a running handler's ``ctx.log`` lines (the rest go with the
outcome): one report per second at most, however chatty the handler."""
MAX_LOG_LINES = 1000
"""``ctx.log`` lines kept per attempt; later ones are counted and dropped, and a last
line says how many (``... N lines dropped``)."""
MAX_LOG_BYTES = 256 * 1024
"""Bytes of ``ctx.log`` messages kept per attempt, under the same rule."""
MAX_LOG_LINE = 8 * 1024
"""Bytes one ``ctx.log`` line may take; a longer one is cut with a visible marker."""

# ---------------------------------------------------------------- dispatcher

LEASE_TTL = 15.0
"""Seconds a dispatcher's lease lasts unless renewed: a standby takes over after this."""
LEASE_MARGIN = 5.0
"""Dispatch only while the lease has this long left, so a successor cannot overlap."""
CHECK_EVERY = 1.0
"""Seconds between checks for lost jobs, dead workers and a restarted Redis."""
LOST_JOB_GRACE = 5.0
"""A job missing from Redis this long after its dispatch was lost by Redis."""
HEARTBEAT_RETURN = 2 * HEARTBEAT_EVERY
"""Seconds after a dispatcher starts, or sees that Redis restarted, before a running job
without a heartbeat counts as a dead worker: a Redis that restarted may have lost the
heartbeat keys of workers that are alive, and each writes its own again at its next beat.
Jobs Redis lost are still sent again at once."""
PICKED_GRACE = 5.0
"""Seconds a job may sit taken by a worker but not started (the worker stopped between)."""
TIMEOUT_MARGIN = 30.0
"""A task still ``working`` this long past its timeout is failed as stuck."""
QUEUE_TIMEOUT = 600.0
"""A job waiting in the queue this long is withdrawn and sent again."""
REPORT_GRACE = 60.0
"""A job that RQ says finished has a report on its way; only if none has arrived this
long after is the attempt presumed to have lost it, and the task sent again."""
COALESCE_IN_FLIGHT = 8
"""With at least this many tasks in flight, a tick gathers reports a moment longer."""
COALESCE_WAIT = 0.01
"""Seconds a busy tick may spend gathering reports: the RQ queue's backlog keeps the
workers busy meanwhile, and one commit then serves many reports."""
COALESCE_BATCH = 64
"""A busy tick stops gathering once it has this many reports."""
START_WAIT = 0.002
"""Seconds a tick that read only start reports waits for more: a short task's outcome
follows its start within a millisecond or two and then shares its commit, instead of
queueing behind a commit of its own (starts never make a task ready, so nothing waits)."""
MAX_BLOCK = 0.5
"""Longest blocking read on the report stream, so stop requests are seen quickly."""
DATABASE_RETRY = 1.0
"""Seconds the dispatcher waits before trying again after a database error."""
DATABASE_RETRY_CAP = 30.0
"""Longest wait between tries while the database keeps failing."""

# ---------------------------------------------------------------- fencing marks

FENCE_TTL = 7 * 24 * 3600
"""Seconds a superseded attempt's mark lives in Redis: a worker paused longer than
this with the job in hand could still start it (the database still ignores its reports)."""
RESULT_TTL = 600
"""Seconds RQ keeps a finished job; the report already carries what matters."""
FAILURE_TTL = 24 * 3600
"""Seconds RQ keeps a failed job in its failed registry, for ``rq info`` and dashboards."""
MAX_JOB_DATA = 64 * 1024 * 1024
"""Bytes a job's data may take once decompressed; a worker refuses a bigger record
before inflating it further (a few kilobytes of zlib can otherwise claim gigabytes)."""

# ---------------------------------------------------------------- retries

BACKOFF_BASE = 2.0
"""Seconds before the first retry of a failed attempt; doubled for each further failure."""
BACKOFF_CAP = 300.0
"""No retry waits longer than this."""

# ---------------------------------------------------------------- database

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the lock before giving up: CLI commands run
while the dispatcher is busy wait instead of failing with "database is locked"."""

# ---------------------------------------------------------------- retention

PRUNE_CHUNK = 1000
"""Most tasks one pruning transaction deletes: the write lock is held for tens of
milliseconds at a time, so a dispatcher (or a CLI command) waits at most that long."""
PRUNE_READ_CHUNK = 5000
"""Rows fetched at a time while planning a prune (tasks, then edges), so planning over
100,000s of tasks never holds them all as row objects at once."""
RETENTION_EVERY = 3600.0
"""Seconds between the dispatcher's retention passes (``BRIDGE_RETENTION``). The first
pass starts once the dispatcher is up; ``BRIDGE_RETENTION_EVERY`` changes the interval
(tests shorten it)."""
RETENTION_DUTY = 0.1
"""Share of the dispatcher's time its retention may take: after a batch that took
``d`` seconds it waits ``d * (1 / RETENTION_DUTY - 1)`` before the next, so dispatching
goes on at about 90% of its speed while a large backlog is pruned."""
RETENTION_PAUSE_MIN = 0.05
"""Shortest wait between two retention batches of the dispatcher."""

# ---------------------------------------------------------------- bridge run

RUN_POLL = 0.25
"""Seconds between looks at the database while ``bridge run``/``wait`` watch a graph."""
STOP_GRACE = 30.0
"""Seconds children get to finish their current task after SIGTERM."""
SERVE_READY_WAIT = 15.0
"""Seconds ``bridge run --serve`` waits for its ``serve`` to answer before it prints the
dashboard's URL."""
RESTART_BACKOFF = 0.5
"""Seconds ``bridge run`` waits before restarting a child that exited; doubled for each
further exit, so a child that cannot start does not spin."""
RESTART_BACKOFF_CAP = 10.0
"""No restart of a child waits longer than this."""
RESTART_RESET_AFTER = 30.0
"""A child that stayed up this long is healthy again: its next restart waits the base delay."""
DISPATCHER_MIN_UPTIME = 2.0
"""A dispatcher that exits sooner than this after its start did not come up."""
DISPATCHER_MAX_QUICK_EXITS = 5
"""``bridge run`` gives up (one line naming the dispatcher's log) when the dispatcher
exits this many times in a row before ``DISPATCHER_MIN_UPTIME``. Workers are always
restarted: the database makes any number of worker restarts safe."""
ORPHAN_GRACE = 90.0
"""If ``bridge run`` dies without stopping its private Redis (``kill -9``), its children
get SIGTERM from the kernel and stop on their own; the Redis stays up until its last
client has left (so the workers can report the task they finish), at most this long.
More than ``STOP_GRACE``: a worker's own retries against a slow Redis come on top."""
STOP_POLL = 0.1
"""Seconds between looks at the children while ``bridge run`` stops them."""
