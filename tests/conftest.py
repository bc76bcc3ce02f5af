"""Shared fixtures: a private redis-server per test, a SQLite file per test, the real CLI.

Every ``BRIDGE_*`` variable of the developer's shell is removed at import, so
the shell cannot leak settings into a test.
"""

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

for _name in [n for n in os.environ if n.startswith("BRIDGE_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).parent))

# SQLite files, logs and Redis directories of the tests live in memory where the machine
# offers it: a busy shared disk otherwise decides how long the suite takes.
if os.access("/dev/shm", os.W_OK) and "PYTEST_DEBUG_TEMPROOT" not in os.environ:
    tempfile.tempdir = "/dev/shm"

from helpers import Processes, screenshot_dir  # noqa: E402
from postgres import pg_database, pg_url  # noqa: E402, F401  (fixtures)

from bridge.redis_server import PrivateRedis  # noqa: E402


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    """A throwaway redis-server on a free port; never the shared one on 6379."""
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bridge.db"


BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_backends: run the test once on SQLite and once on PostgreSQL (``db_url``)",
    )
    config.addinivalue_line(
        "markers", "sqlite_only: about SQLite itself (files, locks, its planner): SQLite only"
    )


TIMING_SENSITIVE = ("tests/chaos/", "tests/faults/test_faults_pauses.py")
"""Tests whose verdict rests on timings (pauses against the heartbeat limit, a seeded
chaos run): under ``-n`` they run one after another on one worker, never beside each
other, while the rest of the suite shares the other core."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(TIMING_SENSITIVE):
            item.add_marker(pytest.mark.xdist_group("timing"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test (or module, through ``pytestmark``) marked ``both_backends`` runs on each
    backend: ``db_url`` is then a SQLite file or a throwaway PostgreSQL database. A test
    of such a module marked ``sqlite_only`` runs on SQLite alone."""
    marked = metafunc.definition.get_closest_marker
    if "backend" in metafunc.fixturenames and marked("both_backends") and not marked("sqlite_only"):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database this test runs on: SQLite unless the test is marked ``both_backends``."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def db_url(request: pytest.FixtureRequest, backend: str, db_path: Path) -> str:
    """The test's database: a SQLite file, or (``backend`` postgresql) an empty PostgreSQL
    database, which fails instead of skipping under CI."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{db_path}"


@pytest.fixture
def bridge_env(tmp_path: Path, db_url: str, redis_server: PrivateRedis) -> dict[str, str]:
    """The environment of a real ``bridge`` process in this test's sandbox."""
    return {
        **os.environ,
        "BRIDGE_DATABASE_URL": db_url,
        "BRIDGE_REDIS_URL": redis_server.url,
        "BRIDGE_HANDLERS": "test_handlers",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Starts real bridge processes and kills whatever is left at the end."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Browser tests write screenshots; say where (every worker writes the same folder)."""
    folder = screenshot_dir(create=False)
    if folder.is_dir() and any(p.stat().st_mtime >= _STARTED for p in folder.glob("*.png")):
        terminalreporter.write_line(f"dashboard screenshots: {folder}")
