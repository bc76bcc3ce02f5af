"""One redaction for every URL bridge prints or logs: no password ever shows.

Each case is a URL form redis-py (``redis.Redis.from_url``) or SQLAlchemy
(``make_url``) accepts, first checked to really carry the secret for that parser
(so the form is real), then redacted: no piece of the secret may remain, and the
host must still be readable.
"""

from urllib.parse import quote

import pytest
from redis.connection import parse_url
from sqlalchemy.engine import make_url

from bridge.settings import redact_text, redact_url

PIECES = ("hunter", "2xyz")
"""The two halves of every test password; neither may appear in any output."""


def password(separator: str) -> str:
    return PIECES[0] + separator + PIECES[1]


def assert_hidden(shown: str) -> None:
    for piece in PIECES:
        assert piece not in shown, shown
    assert password("") not in shown, shown


SEPARATORS = ["", "/", "#", "@", "?", ":", "%", "&", " "]

REDIS_FORMS = [
    # (template, host that must stay readable, where redis-py finds the password)
    ("redis://:{pw}@cache.example:6380/2", "cache.example:6380", "userinfo"),
    ("redis://alice:{pw}@cache.example:6380/2", "cache.example:6380", "userinfo"),
    ("rediss://alice:{pw}@cache.example/0?ssl_cert_reqs=none", "cache.example", "userinfo"),
    ("redis://cache.example:6380/0?password={pw}", "cache.example:6380", "query"),
    ("redis://alice@cache.example/0?password={pw}", "cache.example", "query"),
    ("redis://cache.example?db=3&password={pw}", "cache.example", "query"),
    ("unix://alice:{pw}@/run/redis.sock?db=1", "/run/redis.sock", "userinfo"),
    ("unix:///run/redis.sock?db=1&password={pw}", "/run/redis.sock", "query"),
    ("unix:///run/redis.sock?password={pw}&db=1", "/run/redis.sock", "query"),
]

SQL_FORMS = [
    ("postgresql://app:{pw}@db.example:5432/bridge", "db.example:5432", "userinfo"),
    ("postgresql+psycopg://app:{pw}@db.example/bridge", "db.example", "userinfo"),
    ("postgresql+psycopg2://app:{pw}@/bridge?host=/var/run/postgresql", "/bridge", "userinfo"),
    ("mysql+pymysql://app:{pw}@db.example/bridge?charset=utf8mb4", "db.example", "userinfo"),
    ("postgresql:///bridge?host=/var/run&password={pw}", "/bridge", "query"),
    ("postgresql://db.example/bridge?sslpassword={pw}", "db.example", "query"),
    ("mssql+pyodbc://app:{pw}@dsn_name", "dsn_name", "userinfo"),
]


def _redis_password(url: str) -> str | None:
    return parse_url(url).get("password")


def _sql_password(url: str) -> str | None:
    parsed = make_url(url)
    if parsed.password is not None:
        return str(parsed.password)
    query = dict(parsed.query)
    return query.get("password") or query.get("sslpassword")  # type: ignore[return-value]


@pytest.mark.parametrize(("template", "host", "_where"), REDIS_FORMS + SQL_FORMS)
def test_a_plain_password_is_read_by_the_parser_and_hidden(template, host, _where):
    # Given a URL form its library accepts, with a password
    url = template.format(pw=password(""))
    parser = _redis_password if url.startswith(("redis", "unix")) else _sql_password
    assert parser(url) == password("")
    # When it is redacted
    shown = redact_url(url)
    # Then the password is gone and the host stays
    assert_hidden(shown)
    assert host in shown
    assert "***" in shown


@pytest.mark.parametrize("separator", SEPARATORS)
@pytest.mark.parametrize(("template", "host", "_where"), REDIS_FORMS + SQL_FORMS)
def test_a_percent_encoded_password_with_any_character_is_hidden(template, host, _where, separator):
    # Given the password encoded the way both libraries decode it
    secret = password(separator)
    url = template.format(pw=quote(secret, safe=""))
    parser = _redis_password if url.startswith(("redis", "unix")) else _sql_password
    assert parser(url) == secret
    # When / Then
    shown = redact_url(url)
    assert_hidden(shown)
    assert host in shown


@pytest.mark.parametrize("separator", SEPARATORS)
@pytest.mark.parametrize(("template", "host", "where"), REDIS_FORMS + SQL_FORMS)
def test_a_raw_password_with_url_characters_is_hidden_however_parsers_split_it(
    template, host, where, separator
):
    # Given a password typed as is, with a character that makes parsers disagree
    url = template.format(pw=password(separator))
    # When it is redacted
    shown = redact_url(url)
    # Then no piece of it shows
    assert_hidden(shown)
    # and the host still does, unless an "@" in a query value hides where it ends
    if not (where == "query" and separator == "@"):
        assert host in shown


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cr3t@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://user:@cache:6379/0", "redis://user:***@cache:6379/0"),
        ("redis://user:s3cr3t/x@cache:6379/0", "redis://user:***@cache:6379/0"),
        ("redis://user:s3#cr3t@cache/0", "redis://user:***@cache/0"),
        ("unix:///nope.sock?password=s3cr3t", "unix:///nope.sock?password=***"),
        ("unix:///nope.sock?db=2&PassWord=s3cr3t", "unix:///nope.sock?db=2&PassWord=***"),
        ("redis://cache/0?token=s3cr3t;db=1", "redis://cache/0?token=***;db=1"),
        (
            "redis://cache/0?pwd=s3cr3t&passwd=s3cr3t&pass=s3cr3t&secret=s3cr3t",
            "redis://cache/0?pwd=***&passwd=***&pass=***&secret=***",
        ),
        ("postgresql://u:s3cr3t/x@nohost:1/db", "postgresql://u:***@nohost:1/db"),
        ("postgresql://u:p@/db?host=/var/run", "postgresql://u:***@/db?host=/var/run"),
        ("redis://cache/0#s3cr3t", "redis://cache/0#***"),
    ],
)
def test_known_forms_render_as_expected(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///task-coordinator.db",
        "sqlite:////var/lib/bridge/bridge.db",
        "sqlite://",
        "redis://localhost:6379/0",
        "redis://user@host/0",
        "rediss://cache.example:6380/0?ssl_cert_reqs=none",
        "unix:///tmp/redis.sock?db=1",
        "postgresql://app@db.example/bridge",
    ],
)
def test_urls_without_a_secret_stay_as_they_are(url):
    assert redact_url(url) == url


@pytest.mark.parametrize(
    "text", ["s3cr3t", "localhost:6379", "u:s3cr3t@host", "::::", "", "postgresql:/u:s3cr3t@h"]
)
def test_a_string_that_is_not_a_url_is_never_echoed(text):
    shown = redact_url(text)
    assert "s3cr3t" not in shown
    assert shown == "<redacted>"


def test_a_driver_message_quoting_part_of_the_password_is_scrubbed():
    # Given the error redis-py raises for a password with "/" (its port is the secret's tail)
    url = "redis://:s3cr3t/x@127.0.0.1:1/0"
    with pytest.raises(ValueError) as caught:
        parse_url(url)
    # When bridge scrubs the message for that URL
    shown = redact_text(str(caught.value), url)
    # Then no piece of the secret is left
    assert "s3cr3t" not in shown


def test_a_message_holding_the_whole_url_gets_its_redacted_form():
    url = "postgresql://u:s3cr3t@h/db?sslpassword=0therp4ss"
    shown = redact_text(f"could not use {url}: boom", url)
    assert "s3cr3t" not in shown and "0therp4ss" not in shown
    assert "could not use" in shown and "boom" in shown
