"""The handler context (``ctx``) and its pure rules: what a context handler sees of its
task, how its progress and log lines are throttled and capped, and when a fan-in's
inputs are too large to send."""

import json
import threading
import time

import pytest

from bridge.messages import Dispatch, Report
from bridge.reporting import LogCap, Throttle, inputs_problem, progress_text
from bridge.settings import MAX_INPUTS_CAP, Settings, SettingsError
from bridge.states import ReportKind
from bridge.workers import context as context_module
from bridge.workers import registry
from bridge.workers.context import TaskContext
from bridge.workers.registry import get_handler, handler, wants_context

DISPATCH = Dispatch(
    task_id="nightly/sum",
    attempt=2,
    job_id="bridge-nightly_sum-0123456789ab-t9",
    kind="sum",
    payload=None,
    timeout=None,
    namespace="0123456789ab",
    inputs={"a": "1", "b": '{"x": [2]}', "c": "not json", "d": None},
    run="nightly",
    local_id="sum",
    max_attempts=3,
)


class Sent:
    """Collects what the context sends, as the report stream would."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.lock = threading.Lock()

    def __call__(self, reports) -> None:
        with self.lock:
            self.reports.extend(reports)

    def of(self, kind: ReportKind) -> list[Report]:
        with self.lock:
            return [r for r in self.reports if r.kind is kind]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- what ctx holds


def test_ctx_names_the_task_as_its_graph_wrote_it_with_run_attempt_and_inputs():
    ctx = TaskContext(DISPATCH, Sent(), "w1")
    assert ctx.task_id == "sum"
    assert ctx.run == "nightly"
    assert (ctx.attempt, ctx.max_attempts) == (2, 3)
    # (each output decoded; text that is not JSON, as a Task Coordinator's, stays text)
    assert ctx.inputs == {"a": 1, "b": {"x": [2]}, "c": "not json", "d": None}
    assert ctx.close() == []


def test_ctx_of_an_unscoped_task_without_dependencies_has_its_id_and_no_inputs():
    plain = Dispatch("t1", 1, "bridge-t1-ns-t1", "k", None, None, namespace="0123456789ab")
    ctx = TaskContext(plain, Sent())
    assert ctx.task_id == "t1"
    assert ctx.run is None
    assert ctx.inputs == {}


# --------------------------------------------------------------------------- progress


def test_progress_is_sent_at_once_then_at_most_once_an_interval_and_the_last_before_the_end(
    monkeypatch,
):
    monkeypatch.setattr(context_module, "PROGRESS_EVERY", 1.5)  # wide: a busy host stalls
    sent = Sent()
    ctx = TaskContext(DISPATCH, sent, "w1")
    # When the handler reports progress three times in quick succession
    ctx.progress(0.1, "starting")
    wait_for(lambda: len(sent.of(ReportKind.PROGRESS)) == 1)
    ctx.progress(0.2)
    ctx.progress(0.4, "downloading")
    # Then only the first went at once; the latest is sent once the interval is over
    assert [r.progress for r in sent.of(ReportKind.PROGRESS)] == [0.1]
    wait_for(lambda: len(sent.of(ReportKind.PROGRESS)) == 2)
    last = sent.of(ReportKind.PROGRESS)[-1]
    assert (last.progress, last.message) == (0.4, "downloading")
    assert last.job_id == DISPATCH.job_id and last.task_id == "nightly/sum"
    # And a progress held back when the handler ends is handed over, to go before the outcome
    ctx.progress(1.0, "done")
    held = ctx.close()
    assert [(r.kind, r.progress) for r in held] == [(ReportKind.PROGRESS, 1.0)]


@pytest.mark.parametrize("fraction, kept", [(-1, 0.0), (1.5, 1.0), (0, 0.0), (True, None)])
def test_progress_is_clamped_to_zero_to_one_and_must_be_a_number(fraction, kept):
    sent = Sent()
    ctx = TaskContext(DISPATCH, sent)
    if kept is None:
        with pytest.raises(TypeError, match="progress takes a number"):
            ctx.progress(fraction)
        return
    ctx.progress(fraction)
    wait_for(lambda: bool(sent.of(ReportKind.PROGRESS)))
    assert sent.of(ReportKind.PROGRESS)[0].progress == kept
    ctx.close()


def test_progress_of_nan_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        TaskContext(DISPATCH, Sent()).progress(float("nan"))


# --------------------------------------------------------------------------- log


def test_log_lines_are_kept_with_level_and_time_and_handed_over_at_the_end():
    sent = Sent()
    ctx = TaskContext(DISPATCH, sent, "w1")
    ctx.log.info("fetched %d rows", 3)
    ctx.log.warning("slow")
    ctx.log.debug("detail")
    held = ctx.close() + sent.of(ReportKind.LOG)
    lines = [line for r in held if r.kind is ReportKind.LOG for line in json.loads(r.lines)]
    assert [(level, message) for _, level, message in lines] == [
        ("INFO", "fetched 3 rows"),
        ("WARNING", "slow"),
        ("DEBUG", "detail"),
    ]
    assert all(len(at) == 26 and at[4] == "-" for at, _, _ in lines)


def test_a_running_handlers_log_lines_are_flushed_while_it_runs(monkeypatch):
    monkeypatch.setattr(context_module, "LOG_FLUSH_EVERY", 0.05)
    sent = Sent()
    ctx = TaskContext(DISPATCH, sent)
    ctx.log.info("one")
    wait_for(lambda: bool(sent.of(ReportKind.LOG)))
    assert json.loads(sent.of(ReportKind.LOG)[0].lines)[0][2] == "one"
    assert ctx.close() == []


def test_an_exception_logged_keeps_its_traceback():
    ctx = TaskContext(DISPATCH, Sent())
    try:
        raise KeyError("missing")
    except KeyError:
        ctx.log.exception("lookup failed")
    (report,) = ctx.close()
    ((_, level, message),) = json.loads(report.lines)
    assert level == "ERROR"
    assert message.startswith("lookup failed\nTraceback") and "KeyError: 'missing'" in message


def test_lines_over_the_cap_are_dropped_and_a_last_line_says_how_many(monkeypatch):
    monkeypatch.setattr(context_module, "MAX_LOG_LINES", 5)
    ctx = TaskContext(DISPATCH, Sent())
    for n in range(12):
        ctx.log.info("line %d", n)
    lines = [line for r in ctx.close() for line in json.loads(r.lines)]
    assert [m for _, _, m in lines[:5]] == [f"line {n}" for n in range(5)]
    assert len(lines) == 6
    assert lines[-1][1] == "WARNING"
    assert lines[-1][2].startswith("... 7 lines dropped")


def test_what_could_not_be_sent_while_running_goes_with_the_outcome(monkeypatch):
    monkeypatch.setattr(context_module, "LOG_FLUSH_EVERY", 0.01)
    attempts = []

    def failing(reports):
        attempts.append(reports)
        raise ConnectionError("redis away")

    ctx = TaskContext(DISPATCH, failing)
    ctx.log.info("kept anyway")
    wait_for(lambda: bool(attempts))
    held = ctx.close()
    assert [json.loads(r.lines)[0][2] for r in held] == ["kept anyway"]


# --------------------------------------------------------------------------- pure rules


def test_progress_reads_as_a_percentage_and_its_message():
    assert progress_text(0.4, "downloading") == "40% downloading"
    assert progress_text(1.0) == "100%"
    assert progress_text(None, "x") == "x"


def test_inputs_within_the_limit_are_fine():
    assert inputs_problem([("a", 10), ("b", 20)], 30) is None
    assert inputs_problem([], 0) is None


def test_inputs_over_the_limit_name_the_largest_dependency_and_the_total():
    problem = inputs_problem([("a", 700000), ("b", 1400000)], 1048576)
    assert problem == (
        "inputs too large: 'b' is 1400000 bytes, the inputs total 2100000,"
        " over the limit of 1048576 (BRIDGE_MAX_INPUTS)"
    )


def test_throttle_allows_one_send_per_interval():
    throttle = Throttle(0.5)
    assert throttle.ready(10.0)
    assert not throttle.ready(10.2)
    assert throttle.wait(10.2) == pytest.approx(0.3)
    assert throttle.ready(10.5)


def test_log_cap_counts_lines_and_bytes():
    cap = LogCap(max_lines=10, max_bytes=10, max_line=1024)
    assert cap.admit("12345") == "12345"
    assert cap.admit("123456") is None  # would pass 10 bytes
    assert cap.admit("12345") == "12345"
    assert cap.admit("x") is None
    assert cap.marker().startswith("... 2 lines dropped")


def test_max_inputs_comes_from_the_environment_and_is_bounded():
    assert Settings.from_env({"BRIDGE_MAX_INPUTS": "1024"}).max_inputs == 1024
    assert Settings.from_env({}).max_inputs == 16 * 1024 * 1024
    with pytest.raises(SettingsError, match="BRIDGE_MAX_INPUTS"):
        Settings(max_inputs=MAX_INPUTS_CAP + 1)


# --------------------------------------------------------------------------- registry


@pytest.fixture
def clean_registry(monkeypatch):
    registry._load_builtins()
    monkeypatch.setattr(registry, "_HANDLERS", dict(registry._HANDLERS))
    monkeypatch.setattr(registry, "_WANTS_CONTEXT", set(registry._WANTS_CONTEXT))


def test_a_context_handler_is_registered_as_one_and_a_plain_one_is_not(clean_registry):
    @handler("unit-ctx", context=True)
    def with_ctx(payload, ctx):
        return sum(ctx.inputs.values())

    @handler("unit-plain")
    def plain(payload):
        return payload

    assert wants_context("unit-ctx") and not wants_context("unit-plain")
    assert get_handler("unit-ctx") is with_ctx
    assert get_handler("unit-plain")(5) == 5
    assert not wants_context("echo")
