"""The deployment files: the Procfile runs under honcho; the compose file names the services."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from helpers import bridge, statuses, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_procfile_runs_a_graph_under_honcho(tmp_path, bridge_env, db_path):
    # Given the repository's Procfile and a small graph
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps([{"id": f"t{i}", "kind": "echo", "payload": i} for i in range(5)]))
    assert bridge("add", "--file", str(graph), env=bridge_env).returncode == 0
    env = {**bridge_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # When honcho starts the dispatch and worker processes
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Then the graph finishes
        wait_until(lambda: set(statuses(db_path).values()) == {"done"}, timeout=60)
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        output = honcho.communicate(timeout=60)[0].decode(errors="replace")
    assert "dispatch.1" in output and "worker.1" in output


def test_compose_file_has_redis_dispatch_and_a_scalable_worker():
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ("redis:", "dispatch:", "worker:"):
        assert f"\n  {service}" in text
    assert "bridge-data:/data" in text
    assert "container_name" not in text  # workers must scale
    assert (ROOT / "Dockerfile").is_file()
