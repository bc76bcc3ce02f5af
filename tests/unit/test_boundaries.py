"""Module boundaries from DESIGN.md, checked on the source with ``ast``.

- Only the store talks SQL: ``sqlalchemy``/``sqlmodel`` are imported only by
  the ``bridge/store/`` package and ``bridge/models.py``.
- Only the broker talks Redis and RQ: ``rq`` and ``redis`` are imported only under
  ``bridge/broker/``.
- Workers need only Redis: nothing under ``bridge/workers/`` imports the store, the models or
  SQL libraries, directly or through the project modules it imports.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bridge",)

SQL_LIBRARIES = {"sqlalchemy", "sqlmodel"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {
    module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
}


def imports_of(module: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (functions included,
    ``if TYPE_CHECKING`` included), with relative imports resolved."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # ``from bridge import store`` imports the module bridge.store
            found.update(
                f"{prefix}.{alias.name}"
                for alias in node.names
                if f"{prefix}.{alias.name}" in MODULES
            )
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def project_closure(module: str) -> set[str]:
    """The project modules ``module`` reaches through imports (itself included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in MODULES:
            continue
        seen.add(current)
        for name in imports_of(current):
            # importing a.b.c also runs a and a.b
            parts = name.split(".")
            todo.extend(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return seen


def test_the_scan_sees_the_modules_it_is_about():
    assert {"bridge.store", "bridge.models", "bridge.broker", "bridge.workers.entry"} <= set(
        MODULES
    )
    assert "sqlalchemy" in {top(n) for n in imports_of("bridge.store")}
    assert "rq" in {top(n) for n in imports_of("bridge.broker.dispatching")}
    assert "redis" in {top(n) for n in imports_of("bridge.broker.working")}


def test_import_scan_finds_imports_inside_functions(tmp_path, monkeypatch):
    source = "def f():\n    from sqlalchemy import text\n    import rq.job\n"
    monkeypatch.setitem(MODULES, "bridge.fake_probe", tmp_path / "fake_probe.py")
    (tmp_path / "fake_probe.py").write_text(source)
    assert {"sqlalchemy", "rq.job"} <= imports_of("bridge.fake_probe")


SQL_OWNERS = {"bridge.models"} | {m for m in MODULES if m.startswith("bridge.store")}
DATABASE_MODULES = {"bridge.models"} | {m for m in MODULES if m.startswith("bridge.store")}
SQL_USERS = sorted(m for m in MODULES if m not in SQL_OWNERS)


@pytest.mark.parametrize("module", SQL_USERS)
def test_only_the_store_and_models_import_sql_libraries(module):
    offending = sorted(n for n in imports_of(module) if top(n) in SQL_LIBRARIES)
    assert offending == [], f"{MODULES[module].relative_to(ROOT)} imports {offending}"


BROKER_MODULES = {m for m in MODULES if m == "bridge.broker" or m.startswith("bridge.broker.")}
REDIS_USERS = sorted(m for m in MODULES if m not in BROKER_MODULES)


@pytest.mark.parametrize("module", REDIS_USERS)
def test_only_the_broker_imports_rq_or_redis(module):
    offending = sorted(n for n in imports_of(module) if top(n) in ("rq", "redis"))
    assert offending == [], f"{MODULES[module].relative_to(ROOT)} imports {offending}"


WORKER_MODULES = sorted(m for m in MODULES if m.startswith("bridge.workers"))


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_workers_never_reach_the_database(module):
    reached = project_closure(module)
    direct_sql = {f"{m} -> {n}" for m in reached for n in imports_of(m) if top(n) in SQL_LIBRARIES}
    assert reached.isdisjoint(DATABASE_MODULES), sorted(reached & DATABASE_MODULES)
    assert direct_sql == set()


def test_a_worker_process_loads_no_sql_library():
    # The same rule at run time: import everything a worker runs and look at sys.modules.
    code = (
        "import sys, bridge.workers, bridge.workers.entry, bridge.workers.process\n"
        "import bridge.workers.builtin\n"
        "from bridge.workers.registry import get_handler\n"
        "get_handler('noop')\n"
        "bad = sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('sqlalchemy', 'sqlmodel')"
        " or m in ('bridge.store', 'bridge.models'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_worker_command_starts_without_loading_sql_or_rich():
    # `bridge worker` goes through the CLI module: it must not pay for SQLAlchemy or rich,
    # whose import doubles a worker's start-up time and memory (and every fork's cost)
    code = (
        "import sys, bridge.cli, bridge.workers.process, bridge.broker.working\n"
        "bad = sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('sqlalchemy', 'sqlmodel', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
