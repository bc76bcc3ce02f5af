"""What crosses Redis: job ids, reports, and the size limits on what a worker sends."""

import json
import re

import pytest

from bridge.messages import (
    Report,
    ReportError,
    cancel_key,
    heartbeat_key,
    job_id_for,
    output_json,
    reports_key,
    truncate,
)
from bridge.states import ReportKind

JOB_ID = re.compile(r"^[A-Za-z0-9_-]+$")

WEIRD_IDS = [
    "plain",
    "with space",
    "x'); DROP TABLE tasks;--",
    'quote"and\\backslash',
    "line\nbreak\r\n",
    "tab\there",
    "ünïcødé-タスク-🚀",
    "٣٤٥",  # non-ASCII digits
    "a:b/c.d*e?f[g]",
    "_",
    "-",
    "___---___",
    "x" * 500,
    "\x00nul",
    "%s%d{}",
]


@pytest.mark.parametrize("task_id", WEIRD_IDS)
@pytest.mark.parametrize("attempt", [1, 2, 1000])
def test_job_id_is_safe_for_rq(task_id, attempt):
    job_id = job_id_for(task_id, attempt)
    assert JOB_ID.match(job_id), job_id
    assert job_id.endswith(f"-a{attempt}")
    assert len(job_id) < 100


def test_job_id_differs_per_attempt():
    ids = {job_id_for("task", attempt) for attempt in range(1, 50)}
    assert len(ids) == 49


def test_job_id_differs_per_task_even_when_the_readable_part_is_the_same():
    # Given ids that all sanitize to the same readable prefix
    similar = [
        "a b",
        "a-b",
        "a_b",
        "a/b",
        "a\nb",
        "a\u00a0b",
        "a  b",
        "x" * 40 + "1",
        "x" * 40 + "2",
    ]
    # Then their job ids still differ
    ids = {job_id_for(task_id, 1) for task_id in similar}
    assert len(ids) == len(similar)


def test_job_id_differs_across_all_weird_ids_and_attempts():
    ids = {job_id_for(t, a) for t in WEIRD_IDS for a in (1, 2, 11)}
    assert len(ids) == len(WEIRD_IDS) * 3


def test_job_id_is_deterministic_and_readable():
    assert job_id_for("resize images", 3) == job_id_for("resize images", 3)
    assert job_id_for("resize images", 3).startswith("bridge-resize_images-")


def test_redis_keys_name_the_queue():
    assert reports_key("q1") == "bridge:q1:reports"
    assert heartbeat_key("q1", "job") == "bridge:q1:alive:job"
    assert cancel_key("q1", "job") == "bridge:q1:cancel:job"
    assert len({reports_key("q"), heartbeat_key("q", "j"), cancel_key("q", "j")}) == 3


# --------------------------------------------------------------------------- reports


FULL = Report(
    task_id="x'); DROP TABLE tasks;-- ✓\n",
    attempt=7,
    kind=ReportKind.FAILED,
    worker="host.1234",
    output=None,
    error="ValueError: bad\nsecond line",
    traceback="Traceback (most recent call last):\n  ...",
    at="2024-01-02 03:04:05.000006",
)


@pytest.mark.parametrize(
    "report",
    [
        FULL,
        Report("t", 1, ReportKind.STARTED, worker="w"),
        Report("t", 2, ReportKind.SUCCEEDED, output='{"a": [1, "é"]}'),
        Report("t", 1, ReportKind.SUCCEEDED, output=""),
    ],
)
def test_report_round_trips_through_str_fields(report):
    fields = report.encode()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert Report.decode(fields) == report


def test_report_round_trips_through_bytes_fields_as_redis_returns_them():
    raw = {k.encode(): v.encode() for k, v in FULL.encode().items()}
    assert Report.decode(raw) == FULL


def test_encode_omits_absent_fields():
    assert Report("t", 1, ReportKind.STARTED).encode() == {
        "task_id": "t",
        "attempt": "1",
        "kind": "started",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"wake": "1"},
        {"task_id": "t", "kind": "started"},
        {"task_id": "t", "attempt": "1"},
        {"attempt": "1", "kind": "started"},
        {"task_id": "t", "attempt": "one", "kind": "started"},
        {"task_id": "t", "attempt": "1.5", "kind": "started"},
        {"task_id": "t", "attempt": "", "kind": "started"},
        {"task_id": "t", "attempt": "1", "kind": "exploded"},
        {b"task_id": b"t", b"attempt": b"\xff\xfe", b"kind": b"started"},
    ],
)
def test_decoding_garbage_raises_report_error(fields):
    with pytest.raises(ReportError, match="not a report"):
        Report.decode(fields)


def test_report_error_is_a_value_error():
    assert issubclass(ReportError, ValueError)


def test_invalid_utf8_in_a_text_field_is_replaced_not_fatal():
    report = Report.decode(
        {b"task_id": b"t", b"attempt": b"1", b"kind": b"failed", b"error": b"\xff"}
    )
    assert report.error == "\ufffd"


# --------------------------------------------------------------------------- truncate


def test_short_text_is_untouched():
    assert truncate("hello", 1024) == "hello"
    exact = "x" * 1024
    assert truncate(exact, 1024) is exact


@pytest.mark.parametrize("limit", [1024, 4096, 100_000])
@pytest.mark.parametrize("char", ["x", "é", "🚀", "\n"])
def test_long_text_is_cut_under_the_limit_with_a_marker(limit, char):
    text = char * (limit * 3)
    result = truncate(text, limit)
    assert len(result.encode()) <= limit
    total = len(text.encode())
    match = re.search(r"\.\.\.\[truncated (\d+) of (\d+) bytes\]$", result)
    assert match, result[-80:]
    assert int(match.group(2)) == total
    kept = result[: match.start()]
    assert text.startswith(kept)
    assert int(match.group(1)) == total - len(kept.encode())


def test_truncate_never_splits_a_character():
    result = truncate("é" * 2000, 1024)  # an odd byte budget lands mid-character
    result.encode("utf-8")  # still valid text
    assert set(result.split("...[")[0]) == {"é"}


# --------------------------------------------------------------------------- output_json


def test_output_json_of_a_small_value_is_its_json():
    assert json.loads(output_json({"a": [1, "é"], "b": None}, 1024)) == {"a": [1, "é"], "b": None}
    assert output_json(None, 1024) == "null"


def test_output_json_of_a_non_json_value_uses_repr():
    class Thing:
        def __repr__(self):
            return "<thing>"

    assert json.loads(output_json({"t": Thing()}, 1024)) == {"t": "<thing>"}


def test_output_json_of_an_oversize_value_is_a_marked_json_string_under_the_limit():
    result = output_json(["x" * 10_000], 1024)
    value = json.loads(result)
    assert isinstance(value, str)
    assert "[truncated" in value
    assert len(result.encode()) <= 1024


@pytest.mark.parametrize("content", ['"' * 5000, "\\" * 5000, "\x01" * 5000])
def test_output_json_stays_under_the_limit_when_escaping_grows_the_text(content):
    result = output_json([content], 1024)
    assert isinstance(json.loads(result), str)
    assert len(result.encode()) <= 1024
