"""the schema of release 0.1.0

Written out table by table (not ``metadata.create_all``) so that it stays what 0.1.0
made whatever the models become. A database 0.1.0 made has no version table: bridge
recognises it and stamps it with this revision (``bridge.store.migrate``), adding the
backoff index the very first commit did not have.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("worker", sa.String(), nullable=True),
        sa.Column("dependencies", sa.Text(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.String(), nullable=True),
        sa.Column("completed_at", sa.String(), nullable=True),
        sa.Column(
            "created_at", sa.String(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True
        ),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=True),
        sa.Column("pending_deps", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=True),
        sa.Column("queued_at", sa.String(), nullable=True),
        sa.Column("not_before", sa.String(), nullable=True),
        sa.Column("updated_at", sa.String(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "worker_slots",
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("active", sa.Integer(), server_default="0", nullable=False),
        sa.Column("task_id", sa.String(), nullable=True),
        sa.Column(
            "updated_at", sa.String(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True
        ),
        sa.PrimaryKeyConstraint("slot"),
    )
    op.create_table(
        "task_edges",
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("depends_on", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["depends_on"], ["tasks.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("task_id", "depends_on"),
    )
    op.create_table(
        "task_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("from_status", sa.String(), nullable=True),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(), nullable=True),
        sa.Column("at", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_edges_depends_on", "task_edges", ["depends_on"])
    op.create_index("ix_task_events_task_id", "task_events", ["task_id"])
    op.create_index(
        "ix_tasks_backoff",
        "tasks",
        ["not_before"],
        sqlite_where=sa.text("status = 'available' AND not_before IS NOT NULL"),
        postgresql_where=sa.text("status = 'available' AND not_before IS NOT NULL"),
    )
    op.create_index(
        "ix_tasks_ready",
        "tasks",
        [sa.text("priority DESC"), "seq"],
        sqlite_where=sa.text("status = 'available' AND pending_deps = 0"),
        postgresql_where=sa.text("status = 'available' AND pending_deps = 0"),
    )
    op.create_index("ix_tasks_seq", "tasks", ["seq"])
    op.create_index("ix_tasks_status", "tasks", ["status"])


def downgrade() -> None:
    for table in ("task_events", "task_edges", "worker_slots", "tasks", "leases"):
        op.drop_table(table)
