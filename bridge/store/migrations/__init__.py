"""Alembic revisions of bridge's schema, shipped inside the package.

Users never write an ``alembic.ini``: ``bridge.store.migrate`` builds Alembic's
``Config`` in code and points it here. Every schema change comes with a revision in
``versions/``; a revision is frozen once released (it never imports the models, so a
later change of the models cannot change what an old revision does).
"""
