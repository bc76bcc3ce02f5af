"""The Python API is typed: ``py.typed`` ships, and a type checker accepts the README's
example and a handler annotated with ``TaskContext``, and flags a handler registered
with the wrong ``context=`` for its arity."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[2]

TYPED_HANDLERS = """
from typing import Any

from bridge import Client, Graph, TaskContext, handler


@handler("typing_plain")
def plain(payload: Any) -> int:
    return 1


@handler("typing_with_context", context=True)
def with_context(payload: Any, ctx: TaskContext) -> int:
    ctx.progress(0.5, "half")
    ctx.log.info("inputs %s", list(ctx.inputs))
    return ctx.attempt + ctx.max_attempts + len(ctx.task_id) + len(ctx.run or "")


def submit() -> dict[str, str]:
    g = Graph()
    first = g.task("first", kind="typing_plain", queue="gpu", delay="10m")
    g.task("second", kind="typing_with_context", after=[first])
    with Client() as client:
        return client.submit(g, run="typed").wait(timeout=1.5)
"""

MISREGISTERED = """
from typing import Any

from bridge import TaskContext, handler


@handler("typing_no_ctx_param", context=True)
def one_argument(payload: Any) -> int:
    return 1


@handler("typing_ctx_param_no_context")
def two_arguments(payload: Any, ctx: TaskContext) -> int:
    return 1
"""


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example:python-api -->\n```python\n(.*?)```", text, re.S)
    assert match
    return match.group(1)


def mypy(tmp_path: Path, name: str, source: str, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "mypy", *options, "--cache-dir", str(tmp_path / ".cache")]
        + ["--follow-imports=silent", f"{name}.py"],
        cwd=tmp_path,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},  # the sources, editable or not
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_ships_py_typed():
    assert (ROOT / "bridge" / "py.typed").is_file()


def test_a_type_checker_accepts_the_api_as_documented_and_flags_a_wrong_context(tmp_path):
    strict = mypy(tmp_path, "typed_handlers", TYPED_HANDLERS, "--strict")
    assert strict.returncode == 0, strict.stdout
    example = mypy(tmp_path, "readme_example", readme_example())
    assert example.returncode == 0, example.stdout
    wrong = mypy(tmp_path, "misregistered", MISREGISTERED)
    assert wrong.returncode == 1, wrong.stdout
    flagged = [line for line in wrong.stdout.splitlines() if "error:" in line]
    assert len(flagged) == 2 and all("[type-var]" in line for line in flagged), wrong.stdout
