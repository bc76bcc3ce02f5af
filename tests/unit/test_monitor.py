"""The worker's monitor thread: delayed start reports, heartbeats, and no busy loop."""

import resource
import threading
import time

from bridge.messages import Report
from bridge.states import ReportKind
from bridge.workers.entry import Monitor, Watch


class RecordingRedis:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def set(self, *args, **kwargs) -> None:
        with self.lock:
            self.calls.append(("set", *args))

    def xadd(self, key, fields) -> None:
        with self.lock:
            self.calls.append(("xadd", key, fields["kind"]))


def watch(client, delay: float) -> Watch:
    report = Report("t", 1, ReportKind.STARTED, "w", at="now")
    return Watch(client, "q", "w", report, time.monotonic() + delay)


def test_a_short_job_sends_no_start_report_of_its_own():
    client = RecordingRedis()
    monitor = Monitor()
    monitor.begin("k", watch(client, delay=5.0))
    assert monitor.end("k") is False
    assert client.calls == []


def test_a_long_job_reports_its_start_after_the_delay():
    client = RecordingRedis()
    monitor = Monitor()
    monitor.begin("k", watch(client, delay=0.05))
    time.sleep(0.3)
    assert monitor.end("k") is True
    assert client.calls == [("xadd", "bridge:q:reports", "started")]


def test_an_idle_monitor_does_not_spin():
    # Given a monitor whose only job has ended
    monitor = Monitor()
    monitor.begin("k", watch(RecordingRedis(), delay=0.01))
    time.sleep(0.1)
    monitor.end("k")
    # When nothing runs for a second
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    time.sleep(1.0)
    used = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    # Then its thread sleeps instead of burning a core
    assert used < 0.2
