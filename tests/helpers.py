"""Helpers for tests that run the real CLI and real processes."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BRIDGE = [sys.executable, "-m", "bridge"]


def bridge(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run one CLI command to completion, capturing its output."""
    return subprocess.run(
        [*BRIDGE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def bridge_json(*args: str, env: dict[str, str]) -> Any:
    result = bridge(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def file_digest(path: Path) -> str:
    """The database file's bytes (plus WAL, if any), to prove a command changed nothing."""
    digest = hashlib.sha256()
    for candidate in (path, Path(f"{path}-wal")):
        if candidate.exists():
            digest.update(candidate.read_bytes())
    return digest.hexdigest()


def query(db: Path | str, sql: str, *params: Any) -> list[tuple]:
    """Rows of ``sql`` (``?`` placeholders) on a SQLite file, or on the database of a
    PostgreSQL URL (``postgresql://`` or ``postgresql+psycopg://``)."""
    if isinstance(db, str) and db.startswith("postgresql"):
        import psycopg

        url = "postgresql://" + db.split("://", 1)[1]
        with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return [] if cursor.description is None else [tuple(r) for r in cursor.fetchall()]
    if isinstance(db, str) and db.startswith("sqlite:///"):
        db = Path(db.removeprefix("sqlite:///"))
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def statuses(db: Path | str) -> dict[str, str]:
    return dict(query(db, "SELECT id, status FROM tasks"))


def wait_until(predicate: Callable[[], bool], timeout: float = 60, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


class Processes:
    """Real ``bridge dispatch`` / ``bridge worker`` processes with logs in the test's tmp dir."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []
        self.count = 0

    def start(
        self, *args: str, env: dict[str, str], prefix: Sequence[str] = ()
    ) -> subprocess.Popen:
        """Start ``bridge ARGS``; ``prefix`` runs it under a wrapper (e.g. ``faketime``)."""
        self.count += 1
        log = open(self.tmp_path / f"proc-{self.count}-{args[0]}.log", "wb")
        process = subprocess.Popen(
            [*prefix, *BRIDGE, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.tmp_path.glob("proc-*.log"))
        )

    @staticmethod
    def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=timeout)

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                try:
                    import os

                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)


def screenshot_dir(create: bool = True) -> Path:
    """Where browser tests write screenshots (``$DASHBOARD_SCREENSHOTS`` or a folder in the
    temporary directory); the session's summary prints it."""
    folder = Path(
        os.environ.get("DASHBOARD_SCREENSHOTS")
        or Path(tempfile.gettempdir()) / "bridge-dashboard-screenshots"
    )
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder
