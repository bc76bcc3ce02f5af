"""Optional sampling profiles of bridge's processes during throughput runs (``--profile``).

py-spy (``pip install py-spy``) attaches to the dispatcher and one worker right
after they start, in ``--nonblocking`` mode so the targets are never paused, and
writes collapsed stacks when its target exits. ``summary`` turns those into the
functions that took the most samples, by own time and by time including callees.
Profiled runs are slower than others: read their timings as such.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.harness import Env, Popen

RATE = 200
"""Samples per second."""


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def attach(env: Env, folder: Path, targets: dict[str, Popen[bytes]]) -> dict[str, Popen[bytes]]:
    """One py-spy per target when ``--profile`` was given; none otherwise."""
    if env.args.profile is None:
        return {}
    binary = py_spy()
    if binary is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    spies = {}
    for name, proc in targets.items():
        argv = [binary, "record", "--nonblocking", "-r", str(RATE), "-f", "raw"]
        argv += ["--subprocesses", "-o", str(folder / f"{name}.txt"), "-p", str(proc.pid)]
        spies[name] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    return spies


def collect(env: Env, spies: dict[str, Popen[bytes]], label: str) -> None:
    """After the targets stopped: wait for each py-spy to write, keep its file in --profile."""
    out_dir = Path(env.args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, spy in spies.items():
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        source = Path(spy.args[spy.args.index("-o") + 1])
        if source.exists():
            stamp = time.strftime("%H%M%S")
            shutil.copy(source, out_dir / f"{name}-{label}-{stamp}.txt")


def summary(path: Path, top: int = 15) -> str:
    """The hottest functions of one collapsed-stack file, by own and inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("own", own), ("inclusive", inclusive)):
        lines.append(f"  top {top} by {title} samples:")
        for frame, count in counter.most_common(top):
            lines.append(f"    {100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(summary(Path(argument)))
