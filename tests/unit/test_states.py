"""The task state machine and the fencing rule, as a specification.

``ALLOWED`` is the single statement of which transitions exist; ``decide_report``
is the rule that makes late, duplicate and stale reports harmless.
"""

import itertools

import pytest

from bridge.states import (
    ALLOWED,
    BACKOFF_BASE,
    BACKOFF_CAP,
    FINISHED_BADLY,
    IN_FLIGHT,
    ReportKind,
    TaskStatus,
    backoff_seconds,
    can_transition,
    decide_report,
    sources_of,
)

S = TaskStatus

EXPECTED_TRANSITIONS = {
    # dispatch, or cancel while waiting
    (S.AVAILABLE, S.QUEUED),
    (S.AVAILABLE, S.CANCELLED),
    # a worker starts it / finishes it without a start report / lost job re-sent
    (S.QUEUED, S.WORKING),
    (S.QUEUED, S.DONE),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.AVAILABLE),
    (S.QUEUED, S.QUEUED),
    (S.QUEUED, S.CANCELLED),
    (S.WORKING, S.DONE),
    (S.WORKING, S.FAILED),
    (S.WORKING, S.AVAILABLE),
    (S.WORKING, S.QUEUED),
    (S.WORKING, S.CANCELLED),
    # bridge retry
    (S.FAILED, S.AVAILABLE),
    (S.CANCELLED, S.AVAILABLE),
}

ALL_PAIRS = list(itertools.product(TaskStatus, TaskStatus))


def test_the_six_states_have_the_seed_names():
    assert {s.value for s in TaskStatus} == {
        "available",
        "queued",
        "working",
        "done",
        "failed",
        "cancelled",
    }
    assert str(S.WORKING) == "working"


def test_every_state_has_an_entry_in_the_table():
    assert set(ALLOWED) == set(TaskStatus)


@pytest.mark.parametrize(
    ("source", "target"),
    [p for p in ALL_PAIRS if p in EXPECTED_TRANSITIONS],
    ids=lambda s: s.value,
)
def test_allowed_transition(source, target):
    assert can_transition(source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [p for p in ALL_PAIRS if p not in EXPECTED_TRANSITIONS],
    ids=lambda s: s.value,
)
def test_forbidden_transition(source, target):
    assert not can_transition(source, target)


def test_done_is_final():
    assert ALLOWED[S.DONE] == frozenset()


def test_sources_of_lists_exactly_the_states_that_may_reach_the_target():
    for target in TaskStatus:
        expected = sorted(src.value for src, tgt in EXPECTED_TRANSITIONS if tgt is target)
        assert list(sources_of(target)) == expected


def test_in_flight_and_finished_badly_sets():
    assert IN_FLIGHT == {S.QUEUED, S.WORKING}
    assert FINISHED_BADLY == {S.FAILED, S.CANCELLED}


# --------------------------------------------------------------------------- decide_report


def decide(
    status=S.WORKING,
    task_attempt=1,
    report_attempt=1,
    kind=ReportKind.SUCCEEDED,
    failures=0,
    max_attempts=1,
):
    return decide_report(
        status=status,
        task_attempt=task_attempt,
        report_attempt=report_attempt,
        kind=kind,
        failures=failures,
        max_attempts=max_attempts,
    )


@pytest.mark.parametrize("kind", list(ReportKind))
@pytest.mark.parametrize("report_attempt", [1, 3])
def test_report_for_another_attempt_is_ignored(kind, report_attempt):
    # Given a task re-dispatched as attempt 2
    # When a report for attempt 1 (stale) or 3 (impossible) arrives
    decision = decide(task_attempt=2, report_attempt=report_attempt, kind=kind)
    # Then it changes nothing
    assert decision.target is None
    assert "stale" in decision.reason
    assert decision.retry_in is None


def test_start_report_moves_queued_to_working():
    decision = decide(status=S.QUEUED, kind=ReportKind.STARTED)
    assert decision.target is S.WORKING


def test_duplicate_start_report_is_ignored():
    decision = decide(status=S.WORKING, kind=ReportKind.STARTED)
    assert decision.target is None
    assert "duplicate" in decision.reason


@pytest.mark.parametrize("status", [S.QUEUED, S.WORKING])
def test_success_moves_an_in_flight_task_to_done(status):
    assert decide(status=status, kind=ReportKind.SUCCEEDED).target is S.DONE


@pytest.mark.parametrize("status", [S.AVAILABLE, S.DONE, S.FAILED, S.CANCELLED])
@pytest.mark.parametrize("kind", list(ReportKind))
def test_report_for_a_task_no_longer_in_flight_is_ignored(status, kind):
    # Given a task that is done, failed, cancelled, or waiting for its retry
    # When a report for its current attempt arrives late
    decision = decide(status=status, kind=kind, failures=0, max_attempts=5)
    # Then it is ignored, and the reason names the state
    assert decision.target is None
    assert status.value in decision.reason


def test_failure_with_attempts_left_goes_back_to_available_with_backoff():
    # Given a task allowed 3 attempts that has not failed yet
    decision = decide(status=S.WORKING, kind=ReportKind.FAILED, failures=0, max_attempts=3)
    # Then the failure sends it back with the first backoff
    assert decision.target is S.AVAILABLE
    assert decision.retry_in == backoff_seconds(1) == BACKOFF_BASE


def test_second_failure_waits_twice_as_long():
    decision = decide(kind=ReportKind.FAILED, failures=1, max_attempts=3)
    assert decision.target is S.AVAILABLE
    assert decision.retry_in == 2 * BACKOFF_BASE


def test_last_failure_is_final():
    # Given a task allowed 3 attempts that already failed twice
    decision = decide(kind=ReportKind.FAILED, failures=2, max_attempts=3)
    # Then the third failure fails it for good
    assert decision.target is S.FAILED
    assert decision.retry_in is None


def test_single_attempt_task_fails_at_once():
    decision = decide(status=S.QUEUED, kind=ReportKind.FAILED, failures=0, max_attempts=1)
    assert decision.target is S.FAILED


def test_failure_before_any_start_report_still_counts():
    decision = decide(status=S.QUEUED, kind=ReportKind.FAILED, failures=0, max_attempts=2)
    assert decision.target is S.AVAILABLE


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (8, 256.0)],
)
def test_backoff_doubles_per_failure(failures, expected):
    assert backoff_seconds(failures) == expected


@pytest.mark.parametrize("failures", [9, 10, 50, 1024])
def test_backoff_is_capped(failures):
    assert backoff_seconds(failures) == BACKOFF_CAP


@pytest.mark.parametrize("failures", [1025, 10_000])
def test_backoff_stays_capped_for_very_many_failures(failures):
    assert backoff_seconds(failures) == BACKOFF_CAP


def test_failure_of_a_task_with_thousands_of_attempts_is_decided():
    decision = decide(kind=ReportKind.FAILED, failures=1024, max_attempts=100_000)
    assert decision.target is S.AVAILABLE
    assert decision.retry_in == BACKOFF_CAP


def test_backoff_is_monotonic():
    values = [backoff_seconds(n) for n in range(1, 30)]
    assert values == sorted(values)


def test_backoff_with_custom_base_and_cap():
    assert backoff_seconds(3, base=0.5, cap=1.5) == 1.5
    assert backoff_seconds(2, base=0.5, cap=10) == 1.0
