"""PostgreSQL URLs as a user writes them: ``postgresql://`` means psycopg 3, and without the
driver the one-line error names the extra to install."""

import os
from pathlib import Path

import pytest
from helpers import bridge, bridge_json

SECRET = "s3cr3t-pw"


@pytest.fixture
def without_psycopg(tmp_path: Path) -> str:
    """A PYTHONPATH whose ``psycopg`` cannot be imported, as where the extra is missing."""
    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named psycopg')\n")
    return str(shadow.parent)


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


def test_a_plain_postgresql_url_uses_psycopg_3(bridge_env, pg_url):
    # Given the test database written as a user would, without a driver name
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    env = {**bridge_env, "BRIDGE_DATABASE_URL": plain}
    # (psycopg2 is not what makes it work: it is not installed here)
    with pytest.raises(ImportError):
        import psycopg2  # noqa: F401
    # When tasks are added and one is dispatched
    assert bridge("add", "a", env=env).returncode == 0
    assert bridge("add", "b", "--after", "a", env=env).returncode == 0
    dispatched = bridge("dispatch", "--once", env=env)
    assert dispatched.returncode == 0, dispatched.stderr
    # Then both URL forms see the same database
    for url in (plain, pg_url):
        shown = {
            t["id"]: t["status"]
            for t in bridge_json("list", env={**env, "BRIDGE_DATABASE_URL": url})
        }
        assert shown == {"a": "queued", "b": "available"}
