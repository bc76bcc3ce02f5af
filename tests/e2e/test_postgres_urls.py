"""PostgreSQL URLs as a user writes them: ``postgresql://`` means psycopg 3, and without the
driver the one-line error names the extra to install."""

import json
import os
from pathlib import Path

import pytest
from helpers import bridge, bridge_json

SECRET = "s3cr3t-pw"


def shadowing(folder: Path, module: str) -> str:
    """A PYTHONPATH entry whose ``module`` cannot be imported (as if not installed)."""
    package = folder / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    return str(folder)


@pytest.fixture
def without_psycopg(tmp_path: Path) -> str:
    """Where the postgres extra is missing: ``psycopg`` cannot be imported."""
    return shadowing(tmp_path / "shadow", "psycopg")


@pytest.mark.parametrize(
    ("scheme", "command"),
    [
        ("postgresql", ["add", "a"]),
        ("postgresql", ["dispatch", "--once"]),
        ("postgresql+psycopg", ["list"]),
    ],
)
def test_a_postgres_url_without_the_driver_names_the_extra_in_one_line(
    bridge_env, without_psycopg, scheme, command
):
    env = {
        **bridge_env,
        "BRIDGE_DATABASE_URL": f"{scheme}://bridge:{SECRET}@127.0.0.1:5432/bridge",
        "PYTHONPATH": os.pathsep.join([without_psycopg, bridge_env["PYTHONPATH"]]),
    }
    result = bridge(*command, env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "psycopg" in result.stderr and "pip install 'bridge[postgres]'" in result.stderr
    assert f"{scheme}://bridge:***@127.0.0.1:5432/bridge" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_a_plain_postgresql_url_uses_psycopg_3(tmp_path, bridge_env, pg_url):
    # Given the test database written as a user would, without a driver name
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    # (with psycopg2 unimportable: it is not what makes it work, even where installed)
    no_psycopg2 = shadowing(tmp_path / "shadow", "psycopg2")
    env = {
        **bridge_env,
        "BRIDGE_DATABASE_URL": plain,
        "PYTHONPATH": os.pathsep.join([no_psycopg2, bridge_env["PYTHONPATH"]]),
    }
    # When a graph is added and dispatched through it
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps([{"id": "a"}, {"id": "b", "dependencies": ["a"]}]))
    assert bridge("add", "--file", str(graph), env=env).returncode == 0
    dispatched = bridge("dispatch", "--once", env=env)
    assert dispatched.returncode == 0, dispatched.stderr
    # Then the driver-named URL sees the same database
    shown = bridge_json("list", env={**env, "BRIDGE_DATABASE_URL": pg_url})
    assert {t["id"]: t["status"] for t in shown} == {"a": "queued", "b": "available"}
