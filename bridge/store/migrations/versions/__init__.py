"""The revisions, oldest first by number (Alembic finds them by file, not by import)."""
