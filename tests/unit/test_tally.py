"""Counts by status carried forward by events (``bridge.tally``)."""

from bridge.tally import apply_events


def test_events_move_tasks_between_statuses_and_ignored_reports_move_none():
    counts = {"available": 1}
    apply_events(
        counts,
        [
            {"from_status": None, "to_status": "available"},
            {"from_status": "available", "to_status": "queued"},
            {"from_status": "queued", "to_status": "working"},
            {"from_status": "working", "to_status": "working"},  # an ignored report
            {"from_status": "working", "to_status": "done"},
        ],
    )
    assert counts == {"available": 1, "done": 1}
