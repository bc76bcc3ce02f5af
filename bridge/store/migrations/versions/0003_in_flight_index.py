"""the index on tasks.status serves only the tasks in flight

``ix_tasks_status`` indexed every status. With statistics older than a backlog just
added, PostgreSQL's planner took it over ``ix_tasks_ready`` and ``ix_tasks_backoff``
and read and sorted every available task on each claim. ``ix_tasks_in_flight`` holds
only ``queued`` and ``working`` tasks, which is all the dispatcher asks it for.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IN_FLIGHT = "status IN ('queued', 'working')"


def upgrade() -> None:
    op.drop_index("ix_tasks_status", table_name="tasks", if_exists=True)
    op.create_index(
        "ix_tasks_in_flight",
        "tasks",
        ["status"],
        if_not_exists=True,
        sqlite_where=sa.text(_IN_FLIGHT),
        postgresql_where=sa.text(_IN_FLIGHT),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_in_flight", table_name="tasks")
    op.create_index("ix_tasks_status", "tasks", ["status"])
