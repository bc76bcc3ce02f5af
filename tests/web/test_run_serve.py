"""``bridge run FILE --serve``: the API answers while the graph runs; the deploy files."""

import json
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


def test_the_deploy_files_run_serve():
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert any(line.startswith("web: bridge serve") for line in procfile)
    web = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["web"]
    command = web["command"].split() if isinstance(web["command"], str) else web["command"]
    assert command[:2] == ["bridge", "serve"]
    # beyond loopback only with a token, which the environment passes in
    assert "BRIDGE_API_TOKEN" in web["environment"]
    assert web["ports"] == ["127.0.0.1:3335:3335"]
