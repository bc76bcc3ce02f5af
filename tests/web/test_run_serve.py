"""``bridge run FILE --serve``: the API answers while the graph runs; the deploy files."""

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import yaml
from conftest import free_port
from helpers import BRIDGE

ROOT = Path(__file__).resolve().parents[2]


def test_run_with_serve_shows_the_graph_while_it_runs(tmp_path, bridge_env):
    # Given a graph whose first task takes a while
    graph = tmp_path / "g.json"
    graph.write_text(
        json.dumps(
            [
                {"id": "slow", "kind": "sleep", "payload": {"seconds": 3}},
                {"id": "after", "dependencies": ["slow"]},
            ]
        )
    )
    port = free_port()
    # When it is run with --serve
    run = subprocess.Popen(
        [*BRIDGE, "run", str(graph), "--serve", "--port", str(port)],
        env=bridge_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: dict = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and run.poll() is None and not seen:
            try:
                seen = httpx.get(f"http://127.0.0.1:{port}/api/summary", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.2)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    # Then the API answered while the graph ran, and the run printed the dashboard's URL
    assert seen.get("total") == 2, (seen, err)
    assert run.returncode == 0, err
    assert f"dashboard: http://127.0.0.1:{port}/" in err
    assert "summary: 2 done" in out
    # And the server stopped with the run
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        raise AssertionError("bridge serve still answers after the run ended")
    except httpx.TransportError:
        pass


def test_the_dashboard_url_answers_as_soon_as_it_is_printed(tmp_path, bridge_env):
    # Given a graph that runs for a few seconds
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps([{"id": "slow", "kind": "sleep", "payload": {"seconds": 4}}]))
    port = free_port()
    # When it is run with --serve and the dashboard line is read
    run = subprocess.Popen(
        [*BRIDGE, "run", str(graph), "--serve", "--port", str(port)],
        env=bridge_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert run.stderr is not None
        line = ""
        for line in run.stderr:
            if line.startswith("dashboard:"):
                break
        # Then the URL it names answers at once, no retry needed
        assert line.startswith(f"dashboard: http://127.0.0.1:{port}/ (log: "), line
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        run.stderr.read()
        assert run.wait(timeout=120) == 0
    finally:
        if run.poll() is None:
            run.kill()


def test_run_with_serve_on_a_port_in_use_refuses_before_adding(tmp_path, bridge_env, db_path):
    # Given a graph, and a port something else already listens on
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps([{"id": "a"}]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When it is run with --serve on that port
        result = subprocess.run(
            [*BRIDGE, "run", str(graph), "--serve", "--port", str(port)],
            env=bridge_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    # Then it says so in one line, exits non-zero, and neither printed a dashboard URL
    # (it would be another server's) nor added the graph
    assert result.returncode != 0
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert "dashboard" not in result.stdout + result.stderr
    assert not db_path.exists()


def test_the_deploy_files_run_serve():
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert any(line.startswith("web: bridge serve") for line in procfile)
    web = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["web"]
    command = web["command"].split() if isinstance(web["command"], str) else web["command"]
    assert command[:2] == ["bridge", "serve"]
    # beyond loopback only with a token, which the environment passes in
    assert "BRIDGE_API_TOKEN" in web["environment"]
    assert web["ports"] == ["127.0.0.1:3335:3335"]
