"""The README's Python example, taken verbatim and run as a user would: a worker that
imports it (``BRIDGE_HANDLERS``), a dispatcher, and ``python pipeline.py``."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- example:python-api -->"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = text.split(MARKER)
    assert len(parts) == 3, f"README must hold exactly one example between two {MARKER}"
    match = re.fullmatch(r"\s*```python\n(.*?)```\s*", parts[1], flags=re.S)
    assert match, "the example is one python code block"
    return match.group(1)


def test_the_readme_example_is_complete_python():
    source = readme_example()
    compile(source, "pipeline.py", "exec")
    assert "from bridge import Client, Graph, handler" in source


def test_the_readme_python_example_runs_verbatim(tmp_path, bridge_env, processes):
    # Given the example as pipeline.py, a worker importing it and a dispatcher
    (tmp_path / "pipeline.py").write_text(readme_example(), encoding="utf-8")
    env = {**bridge_env, "BRIDGE_HANDLERS": "pipeline"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    processes.start("dispatch", env=env)
    worker = subprocess.Popen(
        [sys.executable, "-m", "bridge", "worker", "--quiet"],
        env=env,
        cwd=tmp_path,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.started.append(worker)
    # When the user runs it
    user_env = {k: v for k, v in env.items() if k != "BRIDGE_HANDLERS"}
    result = subprocess.run(
        [sys.executable, "pipeline.py"],
        env=user_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # Then it prints every task done and the count passed down the pipeline
    logs = processes.logs() + (tmp_path / "worker.log").read_text(errors="replace")
    assert result.returncode == 0, result.stderr + logs
    lines = result.stdout.splitlines()
    assert lines == ["{'fetch': 'done', 'parse': 'done', 'count': 'done'}", "4"], logs
