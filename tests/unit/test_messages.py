"""What crosses Redis: job ids, reports, and the size limits on what a worker sends."""

import json
import re

import pytest

from bridge.messages import (
    Dispatch,
    MessageError,
    Report,
    ReportError,
    job_id_for,
    output_json,
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
@pytest.mark.parametrize("token", [1, 2, 10**12])
def test_job_id_is_safe_for_rq_and_carries_namespace_and_token(task_id, token):
    job_id = job_id_for(task_id, "0123456789ab", token)
    assert JOB_ID.match(job_id), job_id
    assert job_id.endswith(f"-0123456789ab-t{token}")
    assert len(job_id) < 100


def test_job_ids_differ_per_token_even_for_ids_with_the_same_readable_part():
    # Given ids that all sanitize to the same readable prefix, each with its own token
    similar = ["a b", "a-b", "a_b", "a/b", "a\nb", "x" * 40 + "1", "x" * 40 + "2"]
    # Then their job ids differ, because the tokens do
    ids = {job_id_for(task_id, "ns", n) for n, task_id in enumerate(similar)}
    assert len(ids) == len(similar)


def test_the_same_task_and_token_in_two_databases_get_different_job_ids():
    assert job_id_for("t", "aaaaaaaaaaaa", 1) != job_id_for("t", "bbbbbbbbbbbb", 1)


def test_job_id_is_readable():
    assert job_id_for("resize images", "ns", 3).startswith("bridge-resize_images-")


# --------------------------------------------------------------------------- dispatch


DISPATCH = Dispatch(
    task_id="t ✓",
    attempt=2,
    job_id="bridge-t-ns-t5",
    kind="echo",
    payload='{"a": 1}',
    timeout=1.5,
    queue="q",
    namespace="0123456789ab",
    max_output=2048,
)


def test_dispatch_round_trips_through_json_like_the_job_kwargs_do():
    assert Dispatch.decode(json.loads(json.dumps(DISPATCH.encode()))) == DISPATCH


def test_a_dispatch_carries_its_inputs_run_and_graph_id_to_the_worker():
    # Given an attempt of a scoped fan-in with its dependencies' outputs
    fan_in = Dispatch(
        task_id="r1/total",
        attempt=1,
        job_id="bridge-r1_total-ns-t3",
        kind="sum",
        payload=None,
        timeout=None,
        namespace="0123456789ab",
        inputs={"a": "1", "b": '[1, "é"]', "c": None},
        run="r1",
        local_id="total",
        max_attempts=4,
    )
    # When it crosses Redis as RQ's JSON
    back = Dispatch.decode(json.loads(json.dumps(fan_in.encode())))
    # Then the worker sees exactly what was sent
    assert back == fan_in
    assert back.graph_id == "total"


@pytest.mark.parametrize("inputs", [{1: "x"}, {"a": 1}, {"a": ["x"]}])
def test_inputs_that_are_not_text_by_name_are_refused(inputs):
    fields = {**DISPATCH.encode(), "inputs": inputs}
    with pytest.raises(MessageError, match="inputs"):
        Dispatch.decode(fields)


@pytest.mark.parametrize(
    "change",
    [
        {"v": 1},
        {"v": 3},
        {"v": None},
        {"attempt": "2"},
        {"attempt": True},
        {"task_id": 5},
        {"payload": {"a": 1}},
        {"timeout": "10"},
        {"namespace": "../../etc"},
        {"namespace": ""},
        {"extra": "field"},
        {"inputs": ["a"]},
        {"inputs": "{}"},
        {"run": 5},
        {"local_id": ["a"]},
        {"max_attempts": "1"},
        {"max_attempts": None},
    ],
)
def test_a_job_that_is_not_exactly_a_dispatch_is_refused(change):
    fields = {**DISPATCH.encode(), **change}
    with pytest.raises(MessageError, match="not a bridge job"):
        Dispatch.decode(fields)


@pytest.mark.parametrize("garbage", [None, [], "text", {"v": 1}])
def test_garbage_is_not_a_dispatch(garbage):
    with pytest.raises(MessageError):
        Dispatch.decode(garbage)


# --------------------------------------------------------------------------- reports


FULL = Report(
    task_id="x'); DROP TABLE tasks;-- ✓\n",
    attempt=7,
    kind=ReportKind.FAILED,
    job_id="bridge-x-ns-t7",
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
        Report("t", 1, ReportKind.STARTED, "j1", worker="w"),
        Report("t", 2, ReportKind.SUCCEEDED, "j2", output='{"a": [1, "é"]}'),
        Report("t", 1, ReportKind.SUCCEEDED, "j1", output=""),
        Report(
            "t",
            1,
            ReportKind.PROGRESS,
            "j1",
            "w",
            at="2024-01-02 03:04:05.000006",
            progress=0.25,
            message="downloading ✓",
        ),
        Report("t", 1, ReportKind.LOG, "j1", "w", lines='[["2024", "INFO", "hi\\n"]]'),
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
    assert Report("t", 1, ReportKind.STARTED, "j").encode() == {
        "task_id": "t",
        "attempt": "1",
        "kind": "started",
        "job_id": "j",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"wake": "1"},
        {"task_id": "t", "kind": "started"},
        {"task_id": "t", "attempt": "1", "kind": "started"},
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


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "half"])
def test_a_progress_that_is_not_a_finite_number_is_not_a_report(value):
    fields = {"task_id": "t", "attempt": "1", "kind": "progress", "job_id": "j", "progress": value}
    with pytest.raises(ReportError, match="not a report"):
        Report.decode(fields)


def test_a_progress_out_of_range_is_clamped():
    fields = {"task_id": "t", "attempt": "1", "kind": "progress", "job_id": "j", "progress": "7"}
    assert Report.decode(fields).progress == 1.0


def test_report_error_is_a_value_error():
    assert issubclass(ReportError, ValueError)


def test_invalid_utf8_in_a_text_field_is_replaced_not_fatal():
    report = Report.decode(
        {b"task_id": b"t", b"attempt": b"1", b"kind": b"failed", b"job_id": b"j", b"error": b"\xff"}
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


@pytest.mark.parametrize("value", [{"t": object()}, {1, 2}, b"bytes", {"k": {3j}}])
def test_output_json_of_a_non_json_value_is_a_type_error_not_a_repr(value):
    with pytest.raises(TypeError, match="not JSON"):
        output_json(value, 1024)


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": -float("inf")}])
def test_output_json_refuses_nan_and_infinity(value):
    with pytest.raises(ValueError, match="NaN or Infinity"):
        output_json(value, 1024)


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
