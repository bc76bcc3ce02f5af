"""Settings as a user gives them: environment variables and global options of the CLI.

Click reads the environment (each global option names its ``BRIDGE_*`` variable), so
these tests go through ``bridge.cli.cli`` in process (``CliRunner``) or through the
real ``python -m bridge`` when what matters is what the user sees on the terminal.
``redact_url`` is a pure function and is tested as one.
"""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import bridge, query

from bridge.cli import cli
from bridge.settings import SettingsError, redact_url

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
"""``add`` nudges a dispatcher through Redis at best effort: never the shared 6379."""


def invoke(*args: str, env: dict[str, str]):
    """``bridge ARGS`` in process, with ``env`` as the only BRIDGE_* settings."""
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def task_ids(db: Path) -> list[str]:
    return [row[0] for row in query(db, "SELECT id FROM tasks ORDER BY id")]


def test_the_database_named_in_the_environment_is_the_one_used(tmp_path):
    # Given BRIDGE_DATABASE_URL in the environment
    db = tmp_path / "env.db"
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{db}", "BRIDGE_REDIS_URL": UNREACHABLE_REDIS}
    # When a task is added and the tasks are listed
    invoke("add", "t1", env=env)
    listed = json.loads(invoke("list", "--json", env=env).stdout)
    # Then both commands used that file
    assert task_ids(db) == ["t1"]
    assert [t["id"] for t in listed] == ["t1"]


def test_an_option_wins_over_its_environment_variable(tmp_path):
    # Given BRIDGE_DATABASE_URL naming one file
    from_env, from_option = tmp_path / "env.db", tmp_path / "option.db"
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{from_env}", "BRIDGE_REDIS_URL": UNREACHABLE_REDIS}
    # When --database-url names another
    invoke("--database-url", f"sqlite:///{from_option}", "add", "t1", env=env)
    # Then the option's database got the task and the variable's was never created
    assert task_ids(from_option) == ["t1"]
    assert not from_env.exists()


def test_an_empty_variable_counts_as_unset(tmp_path, monkeypatch):
    # Given BRIDGE_DATABASE_URL set but empty, in a fresh folder
    monkeypatch.chdir(tmp_path)
    env = {"BRIDGE_DATABASE_URL": "", "BRIDGE_REDIS_URL": UNREACHABLE_REDIS}
    # When a task is added
    invoke("add", "t1", env=env)
    # Then the default database in the working directory is used
    assert task_ids(tmp_path / "task-coordinator.db") == ["t1"]


def test_an_invalid_value_is_refused_before_anything_runs(tmp_path):
    # Given BRIDGE_SLOTS=0
    db = tmp_path / "t.db"
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{db}", "BRIDGE_SLOTS": "0"}
    # When any command is given, in process
    with pytest.raises(SettingsError, match="slots must be at least 1, got 0"):
        CliRunner().invoke(cli, ["add", "t1"], env=env, catch_exceptions=False)
    # Then the command never ran
    assert not db.exists()


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """A real process's environment: the test's database, unreachable Redis, ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_DATABASE_URL"] = f"sqlite:///{tmp_path / 't.db'}"
    env["BRIDGE_REDIS_URL"] = UNREACHABLE_REDIS
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    return {**env, **settings}


@pytest.mark.parametrize(
    ("settings", "options", "message"),
    [
        ({"BRIDGE_SLOTS": "0"}, [], "slots must be at least 1, got 0"),
        ({"BRIDGE_SLOTS": "-3"}, [], "slots must be at least 1, got -3"),
        ({}, ["--slots", "0"], "slots must be at least 1, got 0"),
        ({"BRIDGE_SLOTS": "many"}, [], "'many' is not a valid integer"),
        ({"BRIDGE_WORKER_CLASS": "thread"}, [], "'thread' is not one of 'fork', 'simple'"),
        ({"BRIDGE_QUEUE": "a b"}, [], "queue name must be"),
        ({"BRIDGE_MAX_OUTPUT": "100"}, [], "max output must be at least 1024 bytes, got 100"),
    ],
    ids=["slots-0", "slots-negative", "slots-option-0", "slots-text", "class", "queue", "output"],
)
def test_a_bad_setting_is_one_error_line_and_the_database_is_not_touched(
    tmp_path, settings, options, message
):
    # Given a setting that cannot work, in the environment or as an option
    env = clean_env(tmp_path, **settings)
    # When the user adds a task
    result = bridge(*options, "add", "t1", env=env)
    # Then one line says what is wrong, with no traceback, and nothing was created
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert not (tmp_path / "t.db").exists()


def test_max_output_from_the_environment_limits_payloads_and_the_option_lifts_it(tmp_path):
    # Given BRIDGE_MAX_OUTPUT=1024 and a payload of about 2,000 bytes
    env = clean_env(tmp_path, BRIDGE_MAX_OUTPUT="1024")
    payload = json.dumps("x" * 2000)
    # When it is added under the variable's limit
    refused = bridge("add", "big", "--payload", payload, env=env)
    # Then it is refused in one line
    assert refused.returncode != 0
    assert refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    # And with --max-output 4096 the same command succeeds
    accepted = bridge("--max-output", "4096", "add", "big", "--payload", payload, env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert task_ids(tmp_path / "t.db") == ["big"]


@pytest.mark.parametrize(
    ("handlers", "warned"),
    [(" , test_handlers ,, ", False), ("", True), ("no_such_module_xyz", True)],
    ids=["padded-list", "empty", "missing-module"],
)
def test_handlers_are_a_comma_separated_list_of_modules(tmp_path, handlers, warned):
    # Given BRIDGE_HANDLERS with spaces and empty items, empty, or naming a missing module
    env = clean_env(tmp_path, BRIDGE_HANDLERS=handlers)
    # When a task of a kind registered in tests/test_handlers.py is added
    result = bridge("add", "t1", "--kind", "record", env=env)
    # Then the task is added; only without that module is the user warned its kind is unknown
    assert result.returncode == 0, result.stderr
    assert ("no handler registered here for kind(s) record" in result.stderr) is warned


def test_slots_reach_the_dispatcher_from_the_environment_and_the_option_wins(
    tmp_path, redis_server
):
    # Given BRIDGE_SLOTS=3 and a reachable Redis
    env = clean_env(tmp_path, BRIDGE_SLOTS="3", BRIDGE_REDIS_URL=redis_server.url)
    db = tmp_path / "t.db"

    def slot_count(*options: str) -> int:
        result = bridge(*options, "dispatch", "--once", env=env)
        assert result.returncode == 0, result.stderr
        return query(db, "SELECT count(*) FROM worker_slots")[0][0]

    # When one dispatcher pass runs with the variable alone, then with --slots 7
    # Then the slot table follows the variable, then the option
    assert slot_count() == 3
    assert slot_count("--slots", "7") == 7


def test_help_names_the_environment_variable_of_every_global_option():
    result = CliRunner().invoke(cli, ["--help"], catch_exceptions=False)
    for name in ("DATABASE_URL", "REDIS_URL", "QUEUE", "SLOTS", "HANDLERS", "WORKER_CLASS"):
        assert f"BRIDGE_{name}" in result.output
    assert "BRIDGE_MAX_OUTPUT" in result.output
    assert "BRIDGE_AUTO_MIGRATE" in result.output


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", False), ("false", False), ("off", False), ("1", True), ("yes", True)],
)
def test_auto_migrate_from_the_environment_and_back(value, expected):
    from bridge.settings import Settings

    settings = Settings.from_env({"BRIDGE_AUTO_MIGRATE": value})
    assert settings.auto_migrate is expected
    assert Settings.from_env(settings.as_env()).auto_migrate is expected


def test_auto_migrate_must_be_a_yes_or_no():
    from bridge.settings import Settings

    with pytest.raises(SettingsError, match="BRIDGE_AUTO_MIGRATE must be 1 or 0"):
        Settings.from_env({"BRIDGE_AUTO_MIGRATE": "maybe"})


# --------------------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        (
            "rediss://user:s3cret@host/0?ssl_cert_reqs=none",
            "rediss://user:***@host/0?ssl_cert_reqs=none",
        ),
        ("postgresql://app:s3cret@db.example/bridge", "postgresql://app:***@db.example/bridge"),
        ("redis://user:p%40ss%3Aw0rd@host/0", "redis://user:***@host/0"),
    ],
)
def test_redact_url_hides_the_password(url, expected):
    redacted = redact_url(url)
    assert redacted == expected
    assert "s3cret" not in redacted
    assert "w0rd" not in redacted


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://user@host/0",
        "sqlite:///task-coordinator.db",
        "unix:///tmp/redis.sock?db=1",
    ],
)
def test_redact_url_leaves_urls_without_a_password_alone(url):
    assert redact_url(url) == url


def test_redact_url_of_a_url_with_a_bad_port_still_redacts():
    redacted = redact_url("redis://user:s3cret@host:notaport/0")
    assert "s3cret" not in redacted


def test_redact_url_keeps_ipv6_brackets():
    assert redact_url("redis://:s3cret@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
