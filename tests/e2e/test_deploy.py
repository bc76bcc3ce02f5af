"""The deployment files: the Procfile runs under honcho; the compose file's structure is
parsed and checked, and ``docker compose config`` validates it where a client exists."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
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


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, given as a mapping or as a list of ``KEY=VALUE``."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> set[str]:
    return set(service.get("depends_on") or ())  # a list, or a mapping of conditions


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", "")
    return value.split() if isinstance(value, str) else list(value)


def test_compose_runs_redis_one_dispatcher_and_scalable_workers_from_one_image():
    # Given the repository's compose file
    services = compose()["services"]
    # Then it has the three services the README names
    assert {"redis", "dispatch", "worker"} <= set(services)
    dispatch, worker = services["dispatch"], services["worker"]
    assert command(dispatch)[:2] == ["bridge", "dispatch"]
    assert command(worker)[:2] == ["bridge", "worker"]
    # And the dispatcher and the workers run the same build of bridge
    assert (dispatch.get("build"), dispatch.get("image")) == (
        worker.get("build"),
        worker.get("image"),
    )
    build = worker.get("build")
    if build is not None:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).is_file()
    # And workers can be scaled: nothing that names or binds one instance
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_points_both_bridge_services_at_the_redis_service():
    services = compose()["services"]
    for name in ("dispatch", "worker"):
        # Given the service's environment
        url = urlsplit(environment(services[name]).get("BRIDGE_REDIS_URL", ""))
        # Then its Redis is the compose service called redis, and it starts after it
        assert url.scheme in ("redis", "rediss"), name
        assert url.hostname == "redis", name
        assert (url.port or 6379) == 6379, name
        assert "redis" in depends_on(services[name]), name


def test_compose_keeps_the_database_on_a_volume_of_the_dispatcher_only():
    spec = compose()
    dispatch, worker = spec["services"]["dispatch"], spec["services"]["worker"]
    # Given the dispatcher's SQLite file
    database = environment(dispatch)["BRIDGE_DATABASE_URL"]
    assert database.startswith("sqlite:///")
    folder = str(PurePosixPath(database.removeprefix("sqlite:///")).parent)
    # Then that folder is a named volume, declared at the top level, so it outlives containers
    mounts = [str(v).split(":")[:2] for v in dispatch.get("volumes", [])]
    assert [m for m in mounts if len(m) == 2 and m[1] == folder], mounts
    volume = next(m[0] for m in mounts if len(m) == 2 and m[1] == folder)
    assert volume in (spec.get("volumes") or {})
    # And workers never get the database: they need only Redis
    assert "BRIDGE_DATABASE_URL" not in environment(worker)


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_accepts_the_file():
    compose_cmd = _compose_command()
    if compose_cmd is None:
        pytest.skip("no docker compose client on this machine (docker compose / docker-compose)")
    result = subprocess.run(
        [*compose_cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def compose_postgres() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.postgres.yml").read_text())


def test_compose_postgres_file_points_the_dispatcher_at_a_postgres_service():
    # Given the optional second compose file, laid over the first
    base, extra = compose(), compose_postgres()
    services = extra["services"]
    # Then it adds a postgres service whose data lives on a declared named volume
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:")
    env = environment(postgres)
    mounts = [str(v).split(":")[:2] for v in postgres.get("volumes", [])]
    assert [m for m in mounts if m[1] == "/var/lib/postgresql/data"], mounts
    assert mounts[0][0] in (extra.get("volumes") or {})
    assert "healthcheck" in postgres
    # And the dispatcher's database is that service, with its user, password and database
    url = urlsplit(environment(services["dispatch"])["BRIDGE_DATABASE_URL"])
    assert url.scheme == "postgresql" and url.hostname == "postgres"
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert {"postgres", "redis"} <= depends_on(services["dispatch"])
    assert services["dispatch"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # And it overrides only the dispatcher and the web API (same database): workers still
    # need nothing but Redis
    assert set(services) == {"postgres", "dispatch", "web"}
    assert environment(services["web"]) == environment(services["dispatch"])
    assert "dispatch" in base["services"] and "worker" not in services
    # And the image both files build has the PostgreSQL driver (the postgres extra)
    assert "[postgres]" in (ROOT / "Dockerfile").read_text()


def test_docker_compose_accepts_the_postgres_file_over_the_first():
    compose_cmd = _compose_command()
    if compose_cmd is None:
        pytest.skip("no docker compose client on this machine (docker compose / docker-compose)")
    files = [
        "-f",
        str(ROOT / "docker-compose.yml"),
        "-f",
        str(ROOT / "docker-compose.postgres.yml"),
    ]
    result = subprocess.run(
        [*compose_cmd, *files, "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)["services"]
    url = environment(merged["dispatch"])["BRIDGE_DATABASE_URL"]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert {"redis", "postgres"} <= depends_on(merged["dispatch"])
