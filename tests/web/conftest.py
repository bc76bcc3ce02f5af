"""A real ``bridge serve`` process per test, reached over HTTP with httpx."""

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import Processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    env: dict[str, str]
    process: object

    def client(self, **options: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **options)  # type: ignore[arg-type]


def wait_served(url: str, processes: Processes, process: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:  # type: ignore[attr-defined]
            raise AssertionError(f"bridge serve exited:\n{processes.logs()}")
        try:
            httpx.get(url + "/healthz", timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"bridge serve did not answer within {timeout}s:\n{processes.logs()}")


@pytest.fixture
def start_server(
    processes: Processes, bridge_env: dict[str, str]
) -> Iterator[Callable[..., Server]]:
    """Start ``bridge serve`` with extra environment; returns where it answers."""

    def start(**env: str) -> Server:
        port = free_port()
        full = {**bridge_env, **env}
        process = processes.start("serve", "--port", str(port), env=full)
        url = f"http://127.0.0.1:{port}"
        wait_served(url, processes, process)
        return Server(url, full, process)

    yield start


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


ROOT = Path(__file__).resolve().parents[2]
