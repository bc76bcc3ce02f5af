"""runs, pools, schedules, task logs; a task's run, pool, progress and claim; fractional timeouts

The programming model (graphs in Python, runs, queues and pools, delays and schedules,
handler context) and external tasks claimed over the API need these:

- ``tasks.run``/``tasks.local_id``: the run a task belongs to, and its id as the graph
  wrote it when the run scopes ids; ``runs`` names every run.
- ``tasks.pool`` and ``pools``: bounded concurrency per kind of resource.
- ``tasks.progress``/``tasks.progress_message``: the current attempt's reported progress.
- ``tasks.claim_expires_at``: when an external task's claim lapses.
- ``schedules``: a graph submitted as a new run at each cron due time.
- ``task_logs``: lines a handler logged, kept with their attempt.
- ``tasks.timeout`` holds fractional seconds: double precision on PostgreSQL. SQLite
  keeps the declared INTEGER, whose affinity already stores 1.5 as REAL unchanged;
  changing the declaration would copy the whole table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TASK_COLUMNS = (
    ("run", sa.String()),
    ("local_id", sa.String()),
    ("pool", sa.String()),
    ("progress", sa.Float()),
    ("progress_message", sa.Text()),
    ("claim_expires_at", sa.String()),
)


def _present() -> tuple[set[str], set[str]]:
    """Tables and ``tasks`` columns already there. An unversioned database is stamped
    0001 and upgraded from there, and one made in place by a development build may
    hold some of these already; offline (``--sql``) nothing is there."""
    if context.is_offline_mode():
        return set(), set()
    inspector = sa.inspect(op.get_bind())
    return set(inspector.get_table_names()), {c["name"] for c in inspector.get_columns("tasks")}


def upgrade() -> None:
    tables, columns = _present()
    for name, type_ in _TASK_COLUMNS:
        if name not in columns:
            op.add_column("tasks", sa.Column(name, type_, nullable=True))
    op.create_index("ix_tasks_run", "tasks", ["run"], if_not_exists=True)
    if op.get_context().dialect.name != "sqlite":
        op.alter_column(
            "tasks",
            "timeout",
            type_=sa.Float(),
            existing_type=sa.Integer(),
            existing_nullable=True,
        )
    if "runs" not in tables:
        op.create_table(
            "runs",
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("created_at", sa.String(), nullable=False),
            sa.Column("scoped", sa.Integer(), server_default="0", nullable=False),
            sa.Column("schedule", sa.String(), nullable=True),
            sa.Column("due_at", sa.String(), nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )
    if "pools" not in tables:
        op.create_table(
            "pools",
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("slots", sa.Integer(), nullable=False),
            sa.Column("updated_at", sa.String(), nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )
    if "schedules" not in tables:
        op.create_table(
            "schedules",
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("cron", sa.String(), nullable=False),
            sa.Column("timezone", sa.String(), server_default="UTC", nullable=False),
            sa.Column("graph", sa.Text(), nullable=False),
            sa.Column("catch_up", sa.Integer(), server_default="0", nullable=False),
            sa.Column("created_at", sa.String(), nullable=False),
            sa.Column("last_due", sa.String(), nullable=True),
            sa.Column("next_due", sa.String(), nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )
    if "task_logs" not in tables:
        op.create_table(
            "task_logs",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("task_id", sa.String(), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("at", sa.String(), nullable=False),
            sa.Column("level", sa.String(), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
            sa.PrimaryKeyConstraint("id"),
        )
    op.create_index("ix_task_logs_task_id", "task_logs", ["task_id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_task_logs_task_id", table_name="task_logs")
    op.drop_table("task_logs")
    op.drop_table("schedules")
    op.drop_table("pools")
    op.drop_table("runs")
    op.drop_index("ix_tasks_run", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for name, _ in reversed(_TASK_COLUMNS):
            batch.drop_column(name)
