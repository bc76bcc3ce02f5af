"""Settings: environment first, then CLI overrides, validated once."""

import pytest

from bridge.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_URL,
    DEFAULT_SLOTS,
    DEFAULT_WORKER_CLASS,
    Settings,
    SettingsError,
    parse_handlers,
    redact_url,
)


def test_defaults_with_an_empty_environment():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///task-coordinator.db"
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.queue == DEFAULT_QUEUE
    assert settings.slots == DEFAULT_SLOTS == 5
    assert settings.handlers == ()
    assert settings.worker_class == DEFAULT_WORKER_CLASS == "fork"
    assert settings.max_output == DEFAULT_MAX_OUTPUT
    assert settings.redis_explicit is False


def test_empty_variables_count_as_unset():
    env = {name: "" for name in Settings().as_env()}
    assert Settings.from_env(env) == Settings()
    assert Settings.from_env(env).redis_explicit is False


def test_values_from_the_environment():
    settings = Settings.from_env(
        {
            "BRIDGE_DATABASE_URL": "sqlite:////tmp/x.db",
            "BRIDGE_REDIS_URL": "redis://example:6380/2",
            "BRIDGE_QUEUE": "jobs.v2",
            "BRIDGE_SLOTS": "12",
            "BRIDGE_HANDLERS": " my.handlers , other ,, ",
            "BRIDGE_WORKER_CLASS": "simple",
            "BRIDGE_MAX_OUTPUT": "2048",
            "UNRELATED": "ignored",
        }
    )
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.redis_explicit is True
    assert settings.queue == "jobs.v2"
    assert settings.slots == 12
    assert settings.handlers == ("my.handlers", "other")
    assert settings.worker_class == "simple"
    assert settings.max_output == 2048


def test_overrides_win_over_the_environment_and_none_means_not_given():
    env = {"BRIDGE_SLOTS": "3", "BRIDGE_QUEUE": "envq"}
    settings = Settings.from_env(env, slots=9, queue=None, handlers="a,b")
    assert settings.slots == 9
    assert settings.queue == "envq"
    assert settings.handlers == ("a", "b")
    assert settings.redis_explicit is False
    assert Settings.from_env({}, redis_url="redis://h/0").redis_explicit is True


def test_as_env_round_trips():
    settings = Settings(
        database_url="sqlite:///a.db",
        redis_url="redis://h:1/0",
        queue="q",
        slots=2,
        handlers=("m1", "m2"),
        worker_class="simple",
        max_output=4096,
    )
    assert Settings.from_env(settings.as_env()) == settings


def test_explicit_environment_is_used_instead_of_os_environ(monkeypatch):
    monkeypatch.setenv("BRIDGE_SLOTS", "7")
    assert Settings.from_env().slots == 7
    assert Settings.from_env({}).slots == DEFAULT_SLOTS


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", " "])
def test_invalid_slots_raise(value):
    with pytest.raises(SettingsError, match="SLOTS|slots"):
        Settings.from_env({"BRIDGE_SLOTS": value})


def test_invalid_slots_override_raises():
    with pytest.raises(SettingsError, match="slots must be at least 1, got 0"):
        Settings.from_env({}, slots=0)


@pytest.mark.parametrize("value", ["thread", "FORK", "spawn", "fork "])
def test_invalid_worker_class_raises(value):
    with pytest.raises(SettingsError, match="worker class must be one of fork, simple"):
        Settings.from_env({"BRIDGE_WORKER_CLASS": value})


@pytest.mark.parametrize("queue", ["has space", "a:b", "a/b", "q*", "a\nb"])
def test_invalid_queue_names_raise(queue):
    with pytest.raises(SettingsError, match="queue name"):
        Settings.from_env({"BRIDGE_QUEUE": queue})


@pytest.mark.parametrize("value", ["1023", "0", "lots"])
def test_invalid_max_output_raises(value):
    with pytest.raises(SettingsError, match="MAX_OUTPUT|max output"):
        Settings.from_env({"BRIDGE_MAX_OUTPUT": value})


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


def test_with_validates_too():
    assert Settings().with_(slots=3).slots == 3
    with pytest.raises(SettingsError):
        Settings().with_(slots=0)


def test_parse_handlers():
    assert parse_handlers("") == ()
    assert parse_handlers("a") == ("a",)
    assert parse_handlers(" a, b ,,c ") == ("a", "b", "c")


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
