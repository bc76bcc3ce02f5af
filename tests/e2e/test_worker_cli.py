"""``bridge worker`` as users start it: through the installed console script, from
their project folder, next to another worker of the same name."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import redis
from helpers import wait_until

CONSOLE_SCRIPT = shutil.which("bridge", path=os.path.dirname(sys.executable))


def console(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The ``bridge`` console script itself (its sys.path holds only its own folder)."""
    assert CONSOLE_SCRIPT, "the bridge console script is not installed next to python"
    return subprocess.run(
        [CONSOLE_SCRIPT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def project_env(db_url: str, redis_url: str, handlers: str) -> dict[str, str]:
    """A user's shell: no PYTHONPATH, handlers named the README's way."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {
        **env,
        "BRIDGE_DATABASE_URL": db_url,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_HANDLERS": handlers,
    }


def run_one_task_through_the_console_script(project: Path, env: dict[str, str], kind: str):
    graph = project / "graph.json"
    graph.write_text(json.dumps([{"id": "t", "kind": kind, "payload": "hi"}]))
    assert console("add", "--file", str(graph), env=env, cwd=project).returncode == 0
    assert console("dispatch", "--once", env=env, cwd=project).returncode == 0
    worked = console("worker", "--burst", "--quiet", env=env, cwd=project)
    assert worked.returncode == 0, worked.stderr
    assert console("dispatch", "--once", env=env, cwd=project).returncode == 0
    shown = console("show", "t", "--json", env=env, cwd=project)
    return json.loads(shown.stdout)


def test_handlers_of_the_project_in_the_working_directory_load(tmp_path, db_url, redis_server):
    # Given a project folder with its handlers in myproject/handlers.py
    project = tmp_path / "project"
    (project / "myproject").mkdir(parents=True)
    (project / "myproject" / "__init__.py").write_text("")
    (project / "myproject" / "handlers.py").write_text(
        "from bridge import handler\n\n\n"
        "@handler('shout')\n"
        "def shout(payload):\n"
        "    return payload.upper()\n"
    )
    env = project_env(db_url, redis_server.url, "myproject.handlers")
    # When a task of that kind is run by `bridge worker` started there (the README's form)
    task = run_one_task_through_the_console_script(project, env, "shout")
    # Then the worker loaded the handlers and ran it
    assert task["status"] == "done", task
    assert task["output"] == "HI"


def test_a_project_with_its_own_workers_package_runs_its_tasks(tmp_path, db_url, redis_server):
    # Given a project whose own top-level package is called `workers`
    project = tmp_path / "project"
    (project / "workers").mkdir(parents=True)
    (project / "workers" / "__init__.py").write_text("")
    (project / "workers" / "tasks.py").write_text(
        "from bridge import handler\n\n\n"
        "@handler('own_workers_task')\n"
        "def run(payload):\n"
        "    return {'from': 'the project', 'got': payload}\n"
    )
    env = project_env(db_url, redis_server.url, "workers.tasks")
    # When its task is run
    task = run_one_task_through_the_console_script(project, env, "own_workers_task")
    # Then the project's `workers` package was imported, not bridge's
    assert task["status"] == "done", task
    assert task["output"] == {"from": "the project", "got": "hi"}


def test_a_second_worker_with_a_live_workers_name_is_refused_in_one_line(
    tmp_path, bridge_env, redis_server, processes
):
    # Given a worker named X running on this Redis
    first = processes.start("worker", "--name", "X", env=bridge_env)
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: client.exists("rq:worker:X") == 1, timeout=60)
    # When a second worker is started with the same name
    second = subprocess.run(
        [sys.executable, "-m", "bridge", "worker", "--name", "X"],
        env=bridge_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it is refused in one line, and the first one stays registered and running
    assert second.returncode == 1
    assert second.stderr == (
        f"error: a worker named 'X' is already running on {redis_server.url}\n"
    ), second.stderr
    assert first.poll() is None
    assert client.exists("rq:worker:X") == 1 and not client.hexists("rq:worker:X", "death")
