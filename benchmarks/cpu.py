"""CPU accounting per process, and a gauge of what the rest of the machine was doing.

Read from ``/proc`` (Linux). A process's CPU includes that of its reaped children,
so a forking worker's work-horses count towards their worker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children since it started."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


class CpuMeter:
    """CPU used by named processes from now (or from their start) until ``stop``.

    Processes that exist already (Redis) count from the meter's creation; those
    ``add``ed count from their own start, because the runs start the clock before
    they start the processes, so that their start-up is paid for. Several processes
    added under one name (PostgreSQL's server processes) are summed.
    """

    def __init__(self, pids: dict[str, int] | None = None) -> None:
        self.pids: dict[str, list[int]] = {}
        self.start: dict[str, float] = {}
        for name, pid in (pids or {}).items():
            self.pids[name], self.start[name] = [pid], cpu_seconds(pid)

    def add(self, name: str, pid: int) -> None:
        """A process started after the meter: all of its CPU counts."""
        self.pids.setdefault(name, []).append(pid)
        self.start.setdefault(name, 0.0)

    def stop(self) -> dict[str, float]:
        """Seconds of CPU by name; call it before the processes are stopped."""
        return {
            name: sum(cpu_seconds(pid) for pid in pids) - self.start[name]
            for name, pids in self.pids.items()
        }


def per_task_ms(cpu: dict[str, float], count: int) -> dict[str, float]:
    """``cpu_ms_<name>`` per task for each process, and ``cpu_ms_total`` over all of them."""
    out = {f"cpu_ms_{name}": seconds * 1000 / count for name, seconds in cpu.items()}
    out["cpu_ms_total"] = sum(cpu.values()) * 1000 / count
    return out


def machine_cpu() -> tuple[float, float]:
    """Busy and steal CPU seconds of the whole machine, all cores (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


class LoadMeter:
    """How busy the machine was with work that is not this benchmark's (a noise gauge).

    Other CPU = machine busy time - CPU of our processes - this process's own CPU,
    averaged over the wall time: in cores. ``ours`` is given at ``stop`` because the
    runs start their processes after the meter.
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.busy, self.steal = machine_cpu()

    def stop(self, ours: float) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        busy, steal = machine_cpu()
        ours += time.process_time() - self.own
        return {
            "other_cores": max(0.0, busy - self.busy - ours) / wall,
            "steal_cores": (steal - self.steal) / wall,
        }
