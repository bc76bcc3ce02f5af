"""A throwaway PostgreSQL database per test session, on the machine's server.

The server is the one at ``BRIDGE_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth). Each test session
creates its own database ``bridge_test_<random>`` and drops it at the end; each test
that asks for ``pg_url`` gets that database with an empty ``public`` schema. The shared
databases of the machine are never touched.

When no server answers, tests that need one are skipped locally, but fail under CI
(``CI`` set): PostgreSQL tests are never skipped silently in CI.
"""

import os
import secrets
from collections.abc import Iterator

import pytest

SERVER_URL = os.environ.get("BRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _connect(url: str, **kwargs):
    import psycopg

    return psycopg.connect(url, connect_timeout=5, **kwargs)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a libpq URL (psycopg 3 driver)."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


class PostgresDatabase:
    """One database made for this test session; ``reset`` empties it between tests."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"bridge_test_{secrets.token_hex(6)}"
        self.url = _with_database(server_url, self.name)

    def create(self) -> "PostgresDatabase":
        with _connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def reset(self) -> None:
        """Drop every table (and the rest of ``public``) and end stray sessions."""
        with _connect(self.server_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )
        with _connect(self.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")

    def drop(self) -> None:
        with _connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def postgres_available() -> str | None:
    """None when the server answers, else why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    try:
        with _connect(SERVER_URL) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any reason is a reason to skip
        return f"no PostgreSQL at {SERVER_URL}: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PostgresDatabase]:
    why = postgres_available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {why}")
        pytest.skip(why)
    database = PostgresDatabase(SERVER_URL).create()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture
def pg_url(pg_database: PostgresDatabase) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) of an empty throwaway database."""
    pg_database.reset()
    return sqlalchemy_url(pg_database.url)
