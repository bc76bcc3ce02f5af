"""Due-time rules of schedules (pure): first due after creation, DST, catch-up."""

from datetime import datetime, timedelta, timezone

import pytest

from bridge.graph import make_spec, parse_graph
from bridge.schedules import (
    CATCH_UP_BATCH,
    ScheduleError,
    check_name,
    graph_json,
    latest_due,
    next_due,
    parse_cron,
    parse_zone,
    plan,
    run_name,
    spec_mapping,
)

UTC = timezone.utc


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def dues(cron: str, zone: str, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = next_due(cron, zone, after)
        found.append(after)
    return found


# ---------------------------------------------------------------- first due after creation


def test_the_first_due_time_is_the_first_one_after_the_schedule_was_added():
    # Given a nightly 02:00 Berlin schedule added at 00:30 UTC (01:30 CET)
    # Then it is first due that same night at 02:00 CET (01:00 UTC)
    assert next_due("0 2 * * *", "Europe/Berlin", utc(2026, 11, 28, 0, 30)) == utc(2026, 11, 28, 1)


def test_a_schedule_added_exactly_at_a_due_time_is_first_due_at_the_next_one():
    added = utc(2026, 11, 28, 1, 0)
    assert next_due("0 2 * * *", "Europe/Berlin", added) == utc(2026, 11, 29, 1)


def test_a_schedule_added_a_moment_after_a_due_time_does_not_run_for_it():
    added = utc(2026, 11, 28, 12, 0, 0, 1)
    assert next_due("0 12 * * *", "UTC", added) == utc(2026, 11, 29, 12)


def test_every_minute_is_due_at_each_minute_boundary():
    assert dues("* * * * *", "UTC", utc(2026, 11, 28, 1, 0, 30), 3) == [
        utc(2026, 11, 28, 1, 1),
        utc(2026, 11, 28, 1, 2),
        utc(2026, 11, 28, 1, 3),
    ]


# ---------------------------------------------------------------- daylight saving time


def test_a_daily_0230_in_new_york_runs_at_0300_on_the_spring_forward_day():
    # Given 02:30 does not exist on 2026-03-08 in New York (02:00 EST -> 03:00 EDT)
    found = dues("30 2 * * *", "America/New_York", utc(2026, 3, 7, 2), 3)
    # Then the day before it runs at 02:30 EST, that day once at 03:00 EDT (07:00 UTC),
    # and the day after at 02:30 EDT
    assert found == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]


def test_a_daily_0130_in_new_york_runs_once_on_the_fall_back_day():
    # Given 01:30 happens twice on 2026-11-01 in New York (01:59 EDT -> 01:00 EST)
    found = dues("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 2)
    # Then it runs once, in the first pass (01:30 EDT = 05:30 UTC), then the next day (EST)
    assert found == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_a_daily_0130_looked_up_from_the_repeated_hour_is_not_due_again_that_day():
    # Given it is 01:15 EST, the second pass of the repeated hour, after the 01:30 EDT run
    now = utc(2026, 11, 1, 6, 15)
    # Then the next due time is tomorrow, not 01:30 EDT (already past) nor 01:30 EST
    assert next_due("30 1 * * *", "America/New_York", now) == utc(2026, 11, 2, 6, 30)


def test_a_daily_0230_in_berlin_runs_at_0300_on_the_spring_forward_day():
    found = dues("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), 2)
    assert found == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]


def test_a_daily_0230_in_berlin_runs_once_on_the_fall_back_day():
    # 2026-10-25: 02:59 CEST -> 02:00 CET; 02:30 happens twice, it runs in the first pass
    found = dues("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 2)
    assert found == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_a_half_hourly_schedule_follows_the_clock_through_the_repeated_hour():
    # From 00:45 EDT: 01:00 EDT, 01:30 EDT, 01:00 EST, 01:30 EST, 02:00 EST: every 30 real minutes
    found = dues("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 4, 45), 5)
    assert found == [utc(2026, 11, 1, 5) + timedelta(minutes=30 * n) for n in range(5)]


def test_an_hourly_schedule_has_no_run_in_the_skipped_hour():
    found = dues("0 * * * *", "America/New_York", utc(2026, 3, 8, 5, 30), 3)
    # 01:00 EST (06:00 UTC), then 03:00 EDT (07:00 UTC): no 02:00
    assert found == [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]


def test_the_latest_due_time_agrees_with_the_next_across_spring_forward():
    assert latest_due("30 2 * * *", "America/New_York", utc(2026, 3, 8, 7, 10)) == utc(
        2026, 3, 8, 7, 0
    )
    assert latest_due("30 1 * * *", "America/New_York", utc(2026, 11, 1, 6, 45)) == utc(
        2026, 11, 1, 5, 30
    )


# ---------------------------------------------------------------- catch-up or latest only


def test_a_schedule_not_yet_due_plans_nothing():
    assert (
        plan("0 * * * *", "UTC", due=utc(2026, 1, 1, 5), now=utc(2026, 1, 1, 4, 59), catch_up=False)
        is None
    )


def test_a_schedule_due_now_plans_that_one_run():
    firing = plan(
        "0 * * * *", "UTC", due=utc(2026, 1, 1, 5), now=utc(2026, 1, 1, 5, 0, 2), catch_up=False
    )
    assert firing is not None
    assert firing.due == [utc(2026, 1, 1, 5)]
    assert firing.next_due == utc(2026, 1, 1, 6)
    assert firing.skipped == 0


def test_missed_due_times_without_catch_up_create_only_the_latest():
    # Given an hourly schedule due at 05:00 whose dispatcher was down until 08:20
    firing = plan(
        "0 * * * *", "UTC", due=utc(2026, 1, 1, 5), now=utc(2026, 1, 1, 8, 20), catch_up=False
    )
    # Then only 08:00 is created; 05:00, 06:00 and 07:00 are passed over
    assert firing is not None
    assert firing.due == [utc(2026, 1, 1, 8)]
    assert firing.skipped == 3
    assert firing.next_due == utc(2026, 1, 1, 9)


def test_missed_due_times_with_catch_up_create_each_of_them():
    firing = plan(
        "0 * * * *", "UTC", due=utc(2026, 1, 1, 5), now=utc(2026, 1, 1, 8, 20), catch_up=True
    )
    assert firing is not None
    assert firing.due == [utc(2026, 1, 1, h) for h in (5, 6, 7, 8)]
    assert firing.skipped == 0
    assert firing.next_due == utc(2026, 1, 1, 9)


def test_a_long_catch_up_goes_in_batches_and_stays_due_until_done():
    due, now = utc(2026, 1, 1), utc(2026, 1, 1, 5)  # 300 missed minutes
    firing = plan("* * * * *", "UTC", due=due, now=now, catch_up=True)
    assert firing is not None
    assert len(firing.due) == CATCH_UP_BATCH
    assert firing.next_due == due + timedelta(minutes=CATCH_UP_BATCH)
    assert firing.next_due <= now  # the dispatcher fires it again at once


def test_latest_only_across_a_dst_change_picks_the_real_latest():
    # Due 01:30 EDT on fall-back day, dispatcher back two days later at noon
    firing = plan(
        "30 1 * * *",
        "America/New_York",
        due=utc(2026, 11, 1, 5, 30),
        now=utc(2026, 11, 3, 17),
        catch_up=False,
    )
    assert firing is not None
    assert firing.due == [utc(2026, 11, 3, 6, 30)]
    assert firing.skipped == 2


# ---------------------------------------------------------------- names and input


def test_a_run_is_named_after_its_schedule_and_due_time_in_utc():
    assert run_name("nightly", utc(2026, 11, 28, 2)) == "nightly-20261128T0200Z"
    berlin = datetime(2026, 11, 28, 3, tzinfo=parse_zone("Europe/Berlin"))
    assert run_name("nightly", berlin) == "nightly-20261128T0200Z"


@pytest.mark.parametrize(
    ("given", "kept"),
    [("0  2 * * *", "0 2 * * *"), ("@daily", "0 0 * * *"), ("@HOURLY", "0 * * * *")],
)
def test_cron_expressions_are_kept_as_five_fields(given, kept):
    assert parse_cron(given) == kept


@pytest.mark.parametrize(
    "bad", ["", "0 2 * *", "0 0 2 * * *", "61 * * * *", "0 25 * * *", "x * * * *", "0 0 30 2 *"]
)
def test_bad_cron_expressions_are_refused_in_one_line(bad):
    with pytest.raises(ScheduleError) as caught:
        parse_cron(bad)
    assert "\n" not in str(caught.value)
    assert "cron expression" in str(caught.value)


@pytest.mark.parametrize("bad", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "Europe/"])
def test_unknown_zones_are_refused(bad):
    with pytest.raises(ScheduleError, match="unknown time zone"):
        parse_zone(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "-x", "x y", "a" * 81])
def test_schedule_names_that_cannot_prefix_a_run_are_refused(bad):
    with pytest.raises(ScheduleError, match="bad schedule name"):
        check_name(bad)


def test_a_graph_kept_by_a_schedule_reads_back_as_the_same_specs_with_a_queue():
    specs = [
        make_spec(task_id="fetch", kind="http", payload={"u": 1}, delay="10m"),
        make_spec(task_id="parse", dependencies=["fetch"], queue="cpu", timeout=1.5),
    ]
    kept = parse_graph(graph_json([spec_mapping(s) for s in specs], queue="main"))
    assert [s.queue for s in kept] == ["main", "cpu"]
    assert kept[0].delay == 600 and kept[0].payload == {"u": 1}
    assert kept[1].dependencies == ("fetch",) and kept[1].timeout == 1.5
