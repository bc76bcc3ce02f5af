"""recovery.judge: each disagreement between the database and Redis has one resolution."""

from datetime import datetime, timedelta, timezone

import pytest

from bridge.recovery import Flight, JobState, Limits, judge, parse_time
from bridge.states import TaskStatus

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
LIMITS = Limits(grace=5.0, queue_timeout=600.0, timeout_margin=30.0)


def at(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%d %H:%M:%S.%f")


def flight(status=TaskStatus.QUEUED, queued=60.0, started=None, timeout=None) -> Flight:
    return Flight(
        task_id="t",
        status=status,
        attempt=3,
        job_id="bridge-t-0-a3",
        queued_at=at(queued),
        started_at=None if started is None else at(started),
        timeout=timeout,
        worker="w1",
    )


def verdict(f: Flight, job: JobState):
    return judge(f, job, now=NOW, limits=LIMITS)


def test_nothing_is_judged_within_the_grace_period():
    assert verdict(flight(queued=1.0), JobState(exists=False)) is None


@pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.WORKING])
def test_a_job_missing_from_redis_is_sent_again(status):
    result = verdict(flight(status, started=30.0), JobState(exists=False))
    assert result is not None and result.redispatch and "lost by Redis" in result.reason


def test_a_queued_job_waiting_in_the_queue_is_left_alone():
    assert verdict(flight(), JobState(exists=True, status="queued", waiting=True)) is None


def test_a_queued_job_in_neither_list_is_sent_again():
    result = verdict(flight(), JobState(exists=True, status="queued", waiting=False))
    assert result is not None and result.redispatch


def test_a_job_queued_past_the_queue_timeout_is_sent_again():
    result = verdict(flight(queued=601.0), JobState(exists=True, status="queued", waiting=True))
    assert result is not None and result.redispatch and "queued for over 600s" in result.reason


def test_a_working_task_whose_heartbeat_expired_failed_because_its_worker_died():
    job = JobState(exists=True, status="started", started_at=NOW - timedelta(seconds=20))
    result = verdict(flight(TaskStatus.WORKING, started=20.0), job)
    assert result is not None and not result.redispatch
    assert result.reason.startswith("WorkerLost: worker w1")


def test_a_working_task_with_a_live_heartbeat_is_left_alone():
    job = JobState(exists=True, status="started", heartbeat=True)
    assert verdict(flight(TaskStatus.WORKING, started=20.0), job) is None


def test_a_job_started_without_a_start_report_and_no_heartbeat_means_a_dead_worker():
    # The worker took the job, then died before its first report reached the database.
    job = JobState(exists=True, status="started", started_at=NOW - timedelta(seconds=30))
    result = verdict(flight(TaskStatus.QUEUED), job)
    assert result is not None and result.reason.startswith("WorkerLost")


@pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.WORKING])
def test_a_missing_heartbeat_proves_nothing_until_heartbeats_are_back(status):
    # Redis just restarted (or the dispatcher just started): a live worker's heartbeat key
    # may be gone until its next beat, however long ago its job started
    job = JobState(exists=True, status="started", started_at=NOW - timedelta(seconds=30))
    waiting = Limits(grace=0.0, queue_timeout=600.0, timeout_margin=30.0, heartbeats_back_in=3)
    assert judge(flight(status, started=30.0), job, now=NOW, limits=waiting) is None
    # Once heartbeats are due, the same picture means a dead worker
    due = Limits(grace=0.0, queue_timeout=600.0, timeout_margin=30.0)
    result = judge(flight(status, started=30.0), job, now=NOW, limits=due)
    assert result is not None and result.reason.startswith("WorkerLost")
    # A job Redis lost is still sent again at once
    lost = judge(flight(status, started=30.0), JobState(exists=False), now=NOW, limits=waiting)
    assert lost is not None and lost.redispatch


def test_a_job_just_started_is_given_the_grace_period():
    job = JobState(exists=True, status="started", started_at=NOW - timedelta(seconds=1))
    assert verdict(flight(TaskStatus.QUEUED), job) is None


def test_a_working_task_past_its_timeout_and_margin_is_failed_as_stuck():
    job = JobState(exists=True, status="started", heartbeat=True)
    assert verdict(flight(TaskStatus.WORKING, started=89.0, timeout=60), job) is None
    result = verdict(flight(TaskStatus.WORKING, started=91.0, timeout=60), job)
    assert result is not None and result.reason.startswith("TimeoutError")


@pytest.mark.parametrize("status", ["failed", "stopped", "canceled"])
def test_a_job_rq_gave_up_on_before_any_report_fails_the_attempt(status):
    result = verdict(flight(), JobState(exists=True, status=status))
    assert result is not None and not result.redispatch and status in result.reason


def test_a_finished_job_whose_report_is_on_its_way_is_left_alone():
    assert verdict(flight(), JobState(exists=True, status="finished")) is None


def test_parse_time_reads_both_our_stamps_and_rqs():
    assert parse_time("2026-01-01 12:00:00.000000") == NOW
    assert parse_time("2026-01-01T12:00:00.000000Z") == NOW
    assert parse_time(None) is None


def test_a_job_picked_by_a_worker_that_stopped_before_starting_it_is_sent_again():
    picked = JobState(exists=True, status="queued", picked=True, picked_for=6.0)
    result = verdict(flight(), picked)
    assert result is not None and result.redispatch and "stopped before running" in result.reason


def test_a_job_just_picked_by_a_worker_is_left_alone():
    assert verdict(flight(), JobState(exists=True, status="queued", picked=True)) is None
    assert (
        verdict(flight(), JobState(exists=True, status="queued", picked=True, picked_for=1.0))
        is None
    )


def test_a_finished_job_is_a_report_on_its_way_however_old_its_heartbeat_is():
    # A dispatcher paused for 20 s comes back: the job finished meanwhile, its heartbeat
    # is gone; that is never a dead worker
    job = JobState(exists=True, status="finished", started_at=NOW - timedelta(seconds=19))
    assert verdict(flight(TaskStatus.WORKING, started=19.0), job) is None


def test_a_finished_job_whose_report_never_came_is_sent_again_not_failed():
    job = JobState(exists=True, status="finished", ended_at=NOW - timedelta(seconds=61))
    result = judge(flight(TaskStatus.WORKING, started=70.0), job, now=NOW, limits=Limits())
    assert result is not None and result.redispatch and "report never arrived" in result.reason


def test_a_live_heartbeat_keeps_any_attempt_alive_up_to_its_timeout():
    job = JobState(exists=True, status="started", heartbeat=True)
    assert verdict(flight(TaskStatus.WORKING, started=3600.0), job) is None
    assert verdict(flight(TaskStatus.QUEUED, started=None), job) is None


def test_a_job_that_ended_failed_moments_ago_waits_for_its_report():
    job = JobState(exists=True, status="failed", ended_at=NOW - timedelta(seconds=1))
    assert verdict(flight(TaskStatus.WORKING, started=10.0), job) is None
    late = JobState(exists=True, status="failed", ended_at=NOW - timedelta(seconds=6))
    result = verdict(flight(TaskStatus.WORKING, started=10.0), late)
    assert result is not None and not result.redispatch and "WorkerLost" in result.reason
