"""each task's queue, when a lease was taken, the database's identity and fencing tokens

Bridge added these after 0.1.0, before it had revisions, in place and without a
version table: ``tasks.queue``, ``leases.acquired_at`` and the ``bridge_meta`` table
with its ``identity`` and ``next_token`` rows. A database stamped 0001 may therefore
already hold some of them, so each step looks first and adds only what is missing.

``next_token``: a fencing token must never come back over the database's life. Job ids
of 0.1.0 named the attempt (``-a3``) and a hash of the task id, never a token, so no
later job id can equal one of theirs; job ids carrying a token end in ``-t<token>``, and
the first new token is above every one still recorded.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

import re
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOKEN = re.compile(r"-t(\d+)$")


def _present() -> dict[str, set[str]]:
    """What the database already has: ``tables``, ``columns`` (``table.column``) and
    ``meta_keys``. Offline (``--sql``) there is nothing to look at: the caller may say
    in ``config.attributes["bridge_present"]``, else the database is taken as 0001."""
    if context.is_offline_mode():
        given = context.config.attributes.get("bridge_present") or {}
        return {key: set(given.get(key, ())) for key in ("tables", "columns", "meta_keys")}
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())
    columns = {
        f"{table}.{column['name']}"
        for table in ("tasks", "leases")
        for column in inspector.get_columns(table)
    }
    keys: set[str] = set()
    if "bridge_meta" in tables:
        keys = {row[0] for row in bind.execute(sa.text("SELECT key FROM bridge_meta"))}
    return {"tables": tables, "columns": columns, "meta_keys": keys}


def _first_token() -> int:
    """1, or one above the highest token carried by a job id still recorded."""
    if context.is_offline_mode():
        return 1
    highest = 0
    rows = op.get_bind().execute(sa.text("SELECT job_id FROM tasks WHERE job_id LIKE '%-t%'"))
    for (job_id,) in rows:
        match = _TOKEN.search(job_id or "")
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def upgrade() -> None:
    present = _present()
    if "tasks.queue" not in present["columns"]:
        op.add_column(
            "tasks",
            sa.Column("queue", sa.String(), server_default="bridge", nullable=False),
        )
    if "leases.acquired_at" not in present["columns"]:
        op.add_column("leases", sa.Column("acquired_at", sa.Float(), nullable=True))
    if "bridge_meta" not in present["tables"]:
        op.create_table(
            "bridge_meta",
            sa.Column("key", sa.String(), nullable=False),
            sa.Column("value", sa.String(), nullable=False),
            sa.PrimaryKeyConstraint("key"),
        )
    meta = sa.table("bridge_meta", sa.column("key", sa.String()), sa.column("value", sa.String()))
    if "identity" not in present["meta_keys"]:
        op.execute(meta.insert().values(key="identity", value=uuid.uuid4().hex))
    if "next_token" not in present["meta_keys"]:
        op.execute(meta.insert().values(key="next_token", value=str(_first_token())))


def downgrade() -> None:
    op.drop_table("bridge_meta")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("acquired_at")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("queue")
