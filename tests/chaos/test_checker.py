"""The chaos checker on hand-made histories: each rule fires when broken, and only then."""

from datetime import datetime, timezone

from checker import History, check, epoch

TTL = 10.0
T0 = 1_800_000_000.0


def at(seconds: float) -> str:
    """The store's UTC text for T0 + ``seconds``."""
    moment = datetime.fromtimestamp(T0 + seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def event(task: str, source: str | None, target: str, attempt: int, when: float, detail=""):
    return {
        "task_id": task,
        "from": source,
        "to": target,
        "attempt": attempt,
        "at": at(when),
        "detail": detail,
    }


def run(task: str, attempt: int, start: float, end: float | None, *, ok=True, pid=100, ppid=10):
    lines = [
        {"event": "start", "task": task, "attempt": attempt, "pid": pid, "ppid": ppid,
         "job": f"j-{task}-{attempt}", "t": T0 + start},
    ]  # fmt: skip
    if end is not None:
        lines.append({**lines[0], "event": "end", "t": T0 + end, "ok": ok})
    return lines


def task(status: str, attempts: int = 1, kind: str = "chaos_sleep", timeout: int | None = 60):
    return {"status": status, "attempts": attempts, "kind": kind, "max_attempts": 3,
            "timeout": timeout}  # fmt: skip


def dispatched_and_done(name: str, start: float = 0.0) -> list[dict]:
    return [
        event(name, None, "available", 0, start),
        event(name, "available", "queued", 1, start + 0.1, "dispatched"),
        event(name, "queued", "working", 1, start + 0.3),
        event(name, "working", "done", 1, start + 1.3),
    ]


def rules(history: History) -> list[str]:
    return sorted(v.rule for v in check(history, heartbeat_ttl=TTL).violations)


def test_epoch_reads_the_stores_text():
    assert epoch(at(12.5)) == T0 + 12.5


def test_a_clean_history_has_no_violation():
    # Given two tasks that ran once each and ended done, no slot held
    history = History(
        tasks={"a": task("done"), "b": task("done")},
        events=dispatched_and_done("a") + dispatched_and_done("b", 2.0),
        journal=run("a", 1, 0.2, 1.2) + run("b", 1, 2.2, 3.2, pid=101),
    )
    # Then the checker finds nothing
    report = check(history, heartbeat_ttl=TTL)
    assert report.violations == [] and report.summary() == "no violations"


def test_a_task_left_in_flight_or_available_is_not_final_unless_blocked():
    # Given a task still queued, one available with a failed dependency, one available alone
    history = History(
        tasks={
            "stuck": task("queued"),
            "dep": task("failed", kind="chaos_fail"),
            "child": task("available", 0),
            "lonely": task("available", 0),
        },
        events=[],
        journal=[],
        edges=[("child", "dep")],
        active_slots=["stuck"],
    )
    report = check(history, heartbeat_ttl=TTL)
    # Then the queued and the lonely task break "final"; the child is only blocked
    assert sorted(v.task for v in report.violations) == ["lonely", "stuck"]
    assert report.blocked == ["child"]


def test_a_succeeded_attempt_recorded_as_worker_lost_is_a_false_failure():
    # Given a handler that succeeded, and the dispatcher failing that attempt as WorkerLost
    events = dispatched_and_done("a")[:3] + [
        event("a", "working", "failed", 1, 12.0, "WorkerLost: worker w stopped sending"),
    ]
    history = History(tasks={"a": task("failed")}, events=events, journal=run("a", 1, 0.2, 14.0))
    # Then the checker reports it, naming the attempt and the reason
    report = check(history, heartbeat_ttl=TTL)
    assert [v.rule for v in report.violations] == ["false-failure"]
    assert "WorkerLost" in str(report.violations[0]) and "attempt 1" in str(report.violations[0])


def test_a_false_failure_is_excused_when_the_worker_was_paused_past_the_heartbeat_limit():
    events = dispatched_and_done("a")[:3] + [event("a", "working", "failed", 1, 12.0, "Lost")]
    paused = {"kind": "stop", "role": "worker", "pids": [10], "start": T0 + 1, "end": T0 + 13}
    history = History(
        tasks={"a": task("failed")},
        events=events,
        journal=run("a", 1, 0.2, 14.0),
        faults=[paused],
    )
    report = check(history, heartbeat_ttl=TTL)
    assert report.violations == [] and len(report.excused) == 1
    # But a pause shorter than the limit excuses nothing
    history.faults = [{**paused, "end": T0 + 5}]
    assert rules(history) == ["false-failure"]


def test_a_designed_to_fail_kind_or_a_handler_past_its_timeout_is_no_false_failure():
    events = dispatched_and_done("a")[:3] + [event("a", "working", "failed", 1, 12.0, "x")]
    history = History(
        tasks={"a": task("failed", kind="chaos_fail")}, events=events, journal=run("a", 1, 0, 3)
    )
    assert rules(history) == []
    history.tasks = {"a": task("failed", timeout=2)}
    assert rules(history) == []  # ran 3 s with a 2 s timeout


def test_a_failure_of_another_attempt_is_not_blamed_on_a_successful_one():
    # Given attempt 1 failed by its handler, attempt 2 succeeded
    events = [
        event("a", "available", "queued", 1, 0.0),
        event("a", "queued", "available", 1, 1.0, "failed: RuntimeError"),
        event("a", "available", "queued", 2, 3.0),
        event("a", "queued", "done", 2, 4.0),
    ]
    journal = run("a", 1, 0.1, 0.9, ok=False) + run("a", 2, 3.1, 3.9)
    assert rules(History(tasks={"a": task("done", 2)}, events=events, journal=journal)) == []


def test_a_superseded_attempt_that_starts_is_reported():
    # Given attempt 1 re-dispatched as attempt 2 at 10 s, and attempt 1's handler starting
    # at 20 s (its worker had popped it, paused, resumed)
    events = [
        event("a", "available", "queued", 1, 0.0),
        event("a", "queued", "queued", 2, 10.0, "re-dispatched: a worker took its job"),
        event("a", "queued", "done", 2, 12.0),
    ]
    journal = run("a", 2, 11.0, 11.5, pid=200, ppid=20) + run("a", 1, 20.0, 20.5)
    history = History(tasks={"a": task("done", 2)}, events=events, journal=journal)
    report = check(history, heartbeat_ttl=TTL)
    assert [v.rule for v in report.violations] == ["superseded-start"]
    assert "attempt 1 started" in report.summary()
    # But a start before the re-dispatch is not one (it may overlap: another rule's business)
    history.journal = run("a", 1, 5.0, 9.0) + run("a", 2, 11.0, 11.5, pid=200, ppid=20)
    assert rules(history) == []


def test_a_cancelled_attempt_that_starts_afterwards_is_reported():
    events = [
        event("a", "available", "queued", 1, 0.0),
        event("a", "queued", "cancelled", 1, 2.0, "cancelled"),
    ]
    history = History(tasks={"a": task("cancelled")}, events=events, journal=run("a", 1, 5.0, 6.0))
    assert rules(history) == ["superseded-start"]


def test_two_attempts_running_at_once_is_an_overlap_unless_the_first_worker_was_killed():
    # Given attempt 1 still running (no end) when attempt 2 starts, no fault on its worker
    events = [
        event("a", "available", "queued", 1, 0.0),
        event("a", "working", "queued", 2, 12.0, "re-dispatched"),
        event("a", "queued", "done", 2, 15.0),
    ]
    journal = run("a", 1, 0.5, None) + run("a", 2, 13.0, 14.0, pid=200, ppid=20)
    history = History(tasks={"a": task("done", 2)}, events=events, journal=journal)
    assert rules(history) == ["overlap"]
    # When its worker (the horse's parent) was SIGKILLed at 2 s, the run ended then: fine
    history.faults = [{"kind": "kill", "role": "worker", "pids": [10], "start": T0 + 2.0}]
    assert rules(history) == []


def test_an_overlap_is_excused_by_a_long_pause_but_not_by_a_short_one():
    events = [event("a", "available", "queued", 1, 0.0), event("a", "queued", "done", 2, 20.0)]
    journal = run("a", 1, 0.5, 16.0) + run("a", 2, 13.0, 14.0, pid=200, ppid=20)
    pause = {"kind": "stop", "role": "worker", "pids": [10, 100], "start": T0 + 1, "end": T0 + 15}
    history = History(tasks={"a": task("done", 2)}, events=events, journal=journal, faults=[pause])
    assert rules(history) == []
    history.faults = [{**pause, "end": T0 + 4}]
    assert rules(history) == ["overlap"]


def test_slots_must_name_exactly_the_tasks_in_flight():
    history = History(
        tasks={"a": task("done"), "b": task("working")},
        events=[],
        journal=[],
        active_slots=["a"],
    )
    # ("b" still working also breaks "final": only the slots rule matters here)
    assert "slots" not in rules(History(**{**history.__dict__, "active_slots": ["b"]}))
    report = check(history, heartbeat_ttl=TTL)
    assert [v.rule for v in report.violations] == ["final", "slots"]
    assert "1 active slot(s) ['a'] but 1 task(s) in flight ['b']" in report.summary()


def test_the_summary_is_short_and_counts_every_rule():
    history = History(tasks={f"t{i}": task("queued") for i in range(40)}, events=[], journal=[])
    summary = check(history, heartbeat_ttl=TTL).summary(limit=5)
    assert summary.splitlines()[0] == "41 violation(s): final x40, slots x1"
    assert len(summary.splitlines()) == 7 and summary.endswith("... and 36 more")


def test_a_process_that_exited_on_its_own_is_reported():
    exited = {"kind": "exited", "role": "dispatcher-1", "pids": [7], "start": T0, "end": T0,
              "detail": "exit code 1"}  # fmt: skip
    history = History(tasks={}, events=[], journal=[], faults=[exited])
    report = check(history, heartbeat_ttl=TTL)
    assert [str(v) for v in report.violations] == ["[exited] -: dispatcher-1 [7]: exit code 1"]


def test_a_done_attempt_whose_handler_never_returned_is_a_phantom():
    # Given attempt 2 recorded done while only attempt 1's handler ran (and returned)
    events = [
        event("a", "available", "queued", 1, 0.0),
        event("a", "queued", "queued", 2, 6.0, "re-dispatched"),
        event("a", "queued", "done", 2, 8.0),
    ]
    history = History(tasks={"a": task("done", 2)}, events=events, journal=run("a", 1, 0.5, 5.0))
    report = check(history, heartbeat_ttl=TTL)
    assert [v.rule for v in report.violations] == ["phantom-done"]
    assert "attempt 2 recorded done" in report.summary()


def test_runs_journaled_without_an_attempt_are_reported_not_silently_skipped():
    lines = run("a", 1, 0.0, 1.0)
    for line in lines:
        line["attempt"] = None
    history = History(tasks={"a": task("done")}, events=dispatched_and_done("a"), journal=lines)
    assert rules(history) == ["journal"]


def test_a_process_that_exits_while_starting_is_allowed():
    # Given a worker that refused to start while Redis was down (the supervisor restarted it)
    early = {"kind": "exited-at-start", "role": "worker-1", "pids": [8], "start": T0, "end": T0}
    history = History(tasks={}, events=[], journal=[], faults=[early])
    assert rules(history) == []
