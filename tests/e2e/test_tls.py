"""A Redis that wants TLS and a password: ``rediss://`` works end to end, and the
password never shows in output, logs or help."""

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import bridge

PASSWORD = "tls-s3cret-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server speaking only TLS, with a self-signed certificate and a password."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port)]
        + ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
        + ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        + ["--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_graph_runs_over_tls_with_a_password_that_is_never_printed(
    tmp_path, bridge_env, tls_redis
):
    # Given a TLS Redis with a password, named explicitly
    env = {**bridge_env, "BRIDGE_REDIS_URL": tls_redis, "TMPDIR": str(tmp_path)}
    graph = tmp_path / "g.json"
    graph.write_text(
        json.dumps(
            [
                {"id": "a", "kind": "echo", "payload": "x"},
                {"id": "b", "dependencies": ["a"]},
                # one failure, so that bridge run keeps its process logs for us to read
                {"id": "c", "kind": "fail"},
            ]
        )
    )
    # When the graph runs through it
    result = bridge("run", str(graph), env=env, cwd=tmp_path, timeout=120)
    # Then it finishes, and the password appears nowhere
    assert result.returncode == 1, result.stdout + result.stderr
    assert "summary: 2 done, 1 failed" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    logs = list(tmp_path.glob("bridge-run-*/*.log"))
    assert len(logs) == 3  # the dispatcher's and two workers'
    for log in logs:
        assert PASSWORD not in log.read_text(errors="replace"), log
    dispatch = bridge("dispatch", "--once", env=env)
    assert dispatch.returncode == 0, dispatch.stderr
    assert "rediss://:***@127.0.0.1" in dispatch.stderr
    assert PASSWORD not in dispatch.stderr
    assert PASSWORD not in bridge("--help", env=env).stdout
