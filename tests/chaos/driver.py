"""The chaos test's fault driver: processes it supervises, faults it applies, their log.

Everything random comes from one ``random.Random(seed)``, so a seed replays the same
graph and the same sequence of fault choices (the moments they hit depend on the
machine's timing, which no seed controls). Every fault is logged as one JSON line
(kind, role, pids, start, end, detail) for the checker.
"""

import json
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULTS_DIR = Path(__file__).parent.parent / "faults"
if str(FAULTS_DIR) not in sys.path:
    sys.path.insert(0, str(FAULTS_DIR))

from faultlib import WriteLock, family, holder_pid, signal_all  # noqa: E402
from helpers import BRIDGE, Processes  # noqa: E402

DESIGNED_TO_FAIL = "chaos_fail"
STARTUP_SECONDS = 10.0
"""A process that exits this soon after it started did not come up (e.g. Redis was down
meanwhile): the supervisor restarts it and it is not counted as a process that died."""


def chaos_graph(rnd: random.Random, *, gil_n: int, size: int) -> list[dict[str, Any]]:
    """``size`` tasks of mixed kinds: short, long (2-6 s), GIL-holding (2-4 s), failing,
    failing then succeeding (max_attempts 3); some short ones depend on earlier tasks
    of kinds that succeed."""
    graph: list[dict[str, Any]] = []
    succeeding: list[str] = []
    for i in range(size):
        roll = rnd.random()
        task_id = f"c{i:04d}"
        spec: dict[str, Any] = {"id": task_id, "max_attempts": 2, "timeout": 120}
        if roll < 0.08:
            spec.update(kind="chaos_sleep", payload={"sleep": round(rnd.uniform(2, 6), 2)})
        elif roll < 0.12:
            seconds = rnd.uniform(2, 4)
            spec.update(kind="chaos_gil", payload={"n": int(gil_n * seconds)})
        elif roll < 0.20:
            spec.update(kind=DESIGNED_TO_FAIL, payload={"sleep": 0.05}, max_attempts=1)
        elif roll < 0.28:
            spec.update(kind="chaos_flaky", payload={"sleep": 0.1}, max_attempts=3)
        else:
            spec.update(kind="chaos_sleep", payload={"sleep": round(rnd.uniform(0, 0.2), 3)})
            if succeeding and rnd.random() < 0.3:
                spec["dependencies"] = sorted(
                    set(rnd.sample(succeeding[-30:], min(len(succeeding[-30:]), rnd.randint(1, 2))))
                )
        if spec["kind"] in ("chaos_sleep", "chaos_gil"):
            succeeding.append(task_id)
        graph.append(spec)
    return graph


@dataclass
class Member:
    role: str
    """dispatcher-1, dispatcher-2, worker-1...: a restarted process keeps its role."""
    args: tuple[str, ...]
    process: subprocess.Popen
    started: float = field(default_factory=time.time)


@dataclass
class Chaos:
    """Supervises the dispatchers and workers of a run and applies faults to them."""

    processes: Processes
    env: dict[str, str]
    db: Path
    redis: Any
    """The run's PrivateRedis (restarted on the same port by the redis fault)."""
    fault_log: Path
    rnd: random.Random
    members: dict[str, Member] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    write_locks: list[WriteLock] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ processes

    def start(self, role: str, *args: str) -> None:
        process = self.processes.start(*args, env=self.env)
        self.members[role] = Member(role, args, process)

    def supervise(self) -> None:
        """Restart any member that exited on its own (as systemd would), logging it."""
        with self.lock:
            for role, member in list(self.members.items()):
                if role in self.busy or member.process.poll() is None:
                    continue
                now = time.time()
                # One that had not come up yet (Redis down while it started) may refuse
                # to start, as a CLI does; one that was running must not exit.
                young = now - member.started < STARTUP_SECONDS
                self.log("exited-at-start" if young else "exited", role, [member.process.pid],
                         member.started, now, f"exit code {member.process.returncode}")  # fmt: skip
                self.start(role, *member.args)

    def kill_everything(self) -> None:
        """SIGKILL every member and its work horses, and every lock holder (teardown)."""
        for member in self.members.values():
            signal_all(reversed(family(member.process.pid)), signal.SIGCONT)
            signal_all(reversed(family(member.process.pid)), signal.SIGKILL)
        for process in self.processes.started:
            if process.poll() is None:
                signal_all(family(process.pid), signal.SIGKILL)
        for held in self.write_locks:
            held.kill()

    def resume_everything(self) -> None:
        for pid in list(self.stopped):
            signal_all([pid], signal.SIGCONT)

    # ------------------------------------------------------------------ the log

    def log(
        self, kind: str, role: str, pids: list[int], start: float, end: float, detail: str = ""
    ) -> None:
        line = {"kind": kind, "role": role, "pids": pids, "start": start, "end": end}
        if detail:
            line["detail"] = detail
        with open(self.fault_log, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        self.counts[kind] = self.counts.get(kind, 0) + 1

    # ------------------------------------------------------------------ faults

    def pick(self, prefix: str) -> str | None:
        """A free role of this kind (the lease holder first, for a dispatcher, 2 in 3)."""
        with self.lock:
            free = [r for r in self.members if r.startswith(prefix) and r not in self.busy]
            if not free:
                return None
            if prefix == "dispatcher" and self.rnd.random() < 0.67:
                holder = holder_pid(self.db)
                active = [r for r in free if self.members[r].process.pid == holder]
                free = active or free
            role = self.rnd.choice(sorted(free))
            self.busy.add(role)
            return role

    def release(self, role: str) -> None:
        with self.lock:
            self.busy.discard(role)

    def pause(self, role: str, seconds: float) -> None:
        pids = family(self.members[role].process.pid)
        start = time.time()
        self.stopped.update(pids)
        signal_all(pids, signal.SIGSTOP)
        time.sleep(seconds)
        signal_all(reversed(pids), signal.SIGCONT)
        self.stopped.difference_update(pids)
        self.log("stop", role, pids, start, time.time(), f"{seconds:.1f}s")

    def kill(self, role: str) -> None:
        member = self.members[role]
        pids = family(member.process.pid)
        start = time.time()
        signal_all(pids, signal.SIGKILL)
        try:
            member.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.errors.append(f"{role} pid {member.process.pid} survived SIGKILL")
        self.log("kill", role, pids, start, time.time())
        with self.lock:
            self.start(role, *member.args)

    def hold_lock(self, seconds: float) -> None:
        held = WriteLock(self.db, seconds)
        self.write_locks.append(held)
        released = held.wait(timeout=seconds + 60)
        self.log("lock", "database", [held.process.pid], held.taken, released, f"{seconds:.1f}s")

    def restart_redis(self, down: float) -> None:
        start = time.time()
        self.redis.kill()
        time.sleep(down)
        self.redis.restart()
        self.log("redis_restart", "redis", [], start, time.time(), f"down {down:.1f}s")

    def cli(self, kind: str, task_ids: list[str]) -> None:
        for task_id in task_ids:
            start = time.time()
            done = subprocess.run(
                [*BRIDGE, kind, task_id], env=self.env, capture_output=True, text=True, timeout=90
            )
            detail = (done.stdout or done.stderr).strip().splitlines()[-1:] or [""]
            self.log(kind, task_id, [], start, time.time(), f"rc {done.returncode}: {detail[0]}")
