"""The fencing rule and the retry backoff, as properties over every input.

``decide_report`` is what turns a worker's report into a state change; the store
applies its outcome with a guarded UPDATE whose allowed sources come from
``ALLOWED``. So what must hold is: every outcome it chooses is a transition
``ALLOWED`` permits, a report that is stale, duplicate or late changes nothing,
and a task never runs more attempts than it was given.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.defaults import BACKOFF_BASE, BACKOFF_CAP
from bridge.states import (
    ALLOWED,
    IN_FLIGHT,
    ReportKind,
    TaskStatus,
    backoff_seconds,
    decide_report,
    sources_of,
)

S = TaskStatus
statuses = st.sampled_from(TaskStatus)
kinds = st.sampled_from(ReportKind)
attempts = st.integers(min_value=1, max_value=10_000)
failure_counts = st.integers(min_value=0, max_value=10_000)
attempt_limits = st.integers(min_value=1, max_value=10_000)


def test_the_six_states_keep_the_seed_names():
    # The seed schema's ``status`` column holds these exact strings.
    assert {str(s) for s in TaskStatus} == {
        "available",
        "queued",
        "working",
        "done",
        "failed",
        "cancelled",
    }


# --------------------------------------------------------------------------- decide_report


@given(
    status=statuses,
    task_attempt=attempts,
    report_attempt=attempts,
    kind=kinds,
    failures=failure_counts,
    max_attempts=attempt_limits,
)
def test_every_outcome_decide_report_chooses_is_an_allowed_transition(
    status, task_attempt, report_attempt, kind, failures, max_attempts
):
    # Given any task and any report
    # When the fencing rule decides it
    decision = decide_report(
        status=status,
        task_attempt=task_attempt,
        report_attempt=report_attempt,
        kind=kind,
        failures=failures,
        max_attempts=max_attempts,
    )
    # Then it either changes nothing, or makes a transition the store's guarded UPDATE
    # accepts from this status
    if decision.target is not None:
        assert decision.target in ALLOWED[status]
        assert status.value in sources_of(decision.target)
    # And only a retry carries a wait
    assert (decision.retry_in is not None) == (decision.target is S.AVAILABLE)


@given(
    status=statuses,
    task_attempt=attempts,
    offset=st.integers(min_value=1, max_value=100),
    earlier=st.booleans(),
    kind=kinds,
    failures=failure_counts,
    max_attempts=attempt_limits,
)
def test_a_report_for_any_other_attempt_changes_nothing(
    status, task_attempt, offset, earlier, kind, failures, max_attempts
):
    # Given a report for an attempt that is not the task's current one (a stale one from
    # before a re-dispatch, or one the task never reached)
    report_attempt = task_attempt - offset if earlier else task_attempt + offset
    decision = decide_report(
        status=status,
        task_attempt=task_attempt,
        report_attempt=report_attempt,
        kind=kind,
        failures=failures,
        max_attempts=max_attempts,
    )
    # Then it is ignored, whatever it says
    assert decision.target is None
    assert decision.retry_in is None
    assert "stale" in decision.reason


@given(
    status=st.sampled_from([s for s in TaskStatus if s not in IN_FLIGHT]),
    attempt=attempts,
    kind=kinds,
    failures=failure_counts,
    max_attempts=attempt_limits,
)
def test_a_late_report_for_a_task_no_longer_in_flight_changes_nothing(
    status, attempt, kind, failures, max_attempts
):
    # Given a task that is done, failed, cancelled or waiting for its retry
    # When a report for its current attempt arrives late
    decision = decide_report(
        status=status,
        task_attempt=attempt,
        report_attempt=attempt,
        kind=kind,
        failures=failures,
        max_attempts=max_attempts,
    )
    # Then it is ignored, and the reason names the state the task is in
    assert decision.target is None
    assert status.value in decision.reason


@given(attempt=attempts, failures=failure_counts, max_attempts=attempt_limits)
def test_a_duplicate_start_report_changes_nothing(attempt, failures, max_attempts):
    decision = decide_report(
        status=S.WORKING,
        task_attempt=attempt,
        report_attempt=attempt,
        kind=ReportKind.STARTED,
        failures=failures,
        max_attempts=max_attempts,
    )
    assert decision.target is None
    assert "duplicate" in decision.reason


@given(
    status=st.sampled_from(sorted(IN_FLIGHT)),
    attempt=attempts,
    failures=failure_counts,
    max_attempts=attempt_limits,
)
def test_the_current_attempt_of_a_task_in_flight_decides_its_outcome(
    status, attempt, failures, max_attempts
):
    def decide(kind):
        return decide_report(
            status=status,
            task_attempt=attempt,
            report_attempt=attempt,
            kind=kind,
            failures=failures,
            max_attempts=max_attempts,
        )

    # A success is final, whether or not a start report came first
    assert decide(ReportKind.SUCCEEDED).target is S.DONE
    # A failure goes back to wait for a retry while attempts are left, else fails for good
    failed = decide(ReportKind.FAILED)
    if failures + 1 < max_attempts:
        assert failed.target is S.AVAILABLE
        assert failed.retry_in == backoff_seconds(failures + 1)
    else:
        assert failed.target is S.FAILED


reports = st.lists(
    st.tuples(kinds, st.integers(min_value=-2, max_value=1)), min_size=1, max_size=60
)
"""A worker's reports, each for the current attempt plus an offset (negative: stale)."""


@given(max_attempts=st.integers(min_value=1, max_value=6), reports=reports)
def test_a_task_runs_at_most_max_attempts_and_nothing_moves_it_once_final(max_attempts, reports):
    # Given a task dispatched as attempt 1, re-dispatched after each retryable failure
    status, attempt, failures = S.QUEUED, 1, 0
    final = None
    # When any sequence of reports (stale, duplicate, late, current) arrives
    for kind, offset in reports:
        decision = decide_report(
            status=status,
            task_attempt=attempt,
            report_attempt=attempt + offset,
            kind=kind,
            failures=failures,
            max_attempts=max_attempts,
        )
        if final is not None:
            # Then nothing changes a task that has finished
            assert decision.target is None
            continue
        if decision.target is None:
            continue
        assert decision.target in ALLOWED[status]
        status = decision.target
        if status is S.AVAILABLE:  # a retry: the dispatcher sends the next attempt
            failures += 1
            attempt += 1
            status = S.QUEUED
        elif status in (S.DONE, S.FAILED):
            final = status
    # And no task was given more attempts than allowed; one that failed used them all
    assert attempt <= max_attempts
    assert failures <= max_attempts
    if final is S.FAILED:
        assert failures + 1 == max_attempts


# --------------------------------------------------------------------------- backoff


def test_the_first_retry_waits_the_base_and_each_further_failure_doubles_it():
    assert backoff_seconds(1) == BACKOFF_BASE
    assert backoff_seconds(2) == 2 * BACKOFF_BASE
    assert backoff_seconds(3) == 4 * BACKOFF_BASE


@given(failures=st.integers(min_value=0, max_value=10**9))
def test_no_retry_waits_longer_than_the_cap_or_less_than_the_base(failures):
    # A task with a huge number of failures must still be decided (no overflow)
    assert BACKOFF_BASE <= backoff_seconds(failures) <= BACKOFF_CAP


@given(
    failures=st.integers(min_value=1, max_value=10**6),
    more=st.integers(min_value=1, max_value=10**6),
)
def test_backoff_never_shrinks_as_failures_grow(failures, more):
    assert backoff_seconds(failures) <= backoff_seconds(failures + more)


def test_backoff_reaches_the_cap_and_stays_there():
    capped = next(n for n in range(1, 100) if backoff_seconds(n) == BACKOFF_CAP)
    assert all(backoff_seconds(n) == BACKOFF_CAP for n in range(capped, capped + 1000))


@pytest.mark.parametrize(
    ("base", "cap", "failures", "expected"), [(0.5, 1.5, 3, 1.5), (0.5, 10, 2, 1.0)]
)
def test_backoff_follows_a_given_base_and_cap(base, cap, failures, expected):
    assert backoff_seconds(failures, base=base, cap=cap) == expected
