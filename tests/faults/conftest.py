"""Fixtures of the fault-injection suite, and the summary table it prints at the end.

Every scenario runs real ``bridge dispatch`` / ``bridge worker`` processes against
the test's private redis-server and SQLite file, injects its fault for real, and
adds a row to the table printed in pytest's terminal summary.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

FAULTS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Row:
    nodeid: str
    scenario: str
    tasks: int
    faults: int
    lost: int
    repeated: int
    recover: float | None
    note: str = ""


ROWS = pytest.StashKey[list]()
OUTCOMES = pytest.StashKey[dict]()


class FaultTable:
    """Adds the rows of one test to the session's table."""

    def __init__(self, rows: list[Row], nodeid: str) -> None:
        self.rows = rows
        self.nodeid = nodeid

    def add(
        self,
        scenario: str,
        *,
        tasks: int,
        faults: int,
        lost: int,
        repeated: int,
        recover: float | None,
        note: str = "",
    ) -> None:
        """``lost``: tasks missing, in a wrong final state, or never run; ``repeated``:
        tasks whose handler ran more than once; ``recover``: seconds, as ``note`` says."""
        self.rows.append(Row(self.nodeid, scenario, tasks, faults, lost, repeated, recover, note))


@pytest.fixture(scope="session")
def fault_rows(pytestconfig: pytest.Config) -> list[Row]:
    """The session's collector of table rows."""
    return pytestconfig.stash.setdefault(ROWS, [])


@pytest.fixture
def fault_table(fault_rows: list[Row], request: pytest.FixtureRequest) -> FaultTable:
    return FaultTable(fault_rows, request.node.nodeid)


@pytest.fixture
def fault_env(bridge_env: dict[str, str]) -> dict[str, str]:
    """``bridge_env`` plus this directory's handlers (``fault_handlers``)."""
    return {
        **bridge_env,
        "BRIDGE_HANDLERS": "test_handlers,fault_handlers",
        "PYTHONPATH": os.pathsep.join([str(FAULTS_DIR), bridge_env["PYTHONPATH"]]),
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "XFAIL (bug)" if report.skipped else "XPASS"
        elif "[XPASS(strict)]" in str(report.longrepr or ""):
            outcome = "XPASS(strict)"
        else:
            outcome = {"passed": "pass", "failed": "FAIL"}.get(report.outcome, report.outcome)
        item.config.stash.setdefault(OUTCOMES, {})[item.nodeid] = outcome
    return report


def _order(row: Row) -> tuple:
    number = re.match(r"\d+", row.scenario)
    return (int(number.group()) if number else 99, row.scenario)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    rows: list[Row] = sorted(config.stash.get(ROWS, []), key=_order)
    if not rows:
        return
    outcomes = config.stash.get(OUTCOMES, {})
    header = ("scenario", "result", "tasks", "faults", "lost", "run >1", "recover s", "note")
    body = [
        (
            r.scenario,
            outcomes.get(r.nodeid, "?"),
            str(r.tasks),
            str(r.faults),
            str(r.lost),
            str(r.repeated),
            "-" if r.recover is None else f"{r.recover:.2f}",
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    terminalreporter.section("fault injection")
    for line in [header, tuple("-" * w for w in widths), *body]:
        cells = [
            cell.ljust(w) if i in (0, 1, len(header) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        terminalreporter.write_line(" | ".join(cells).rstrip())
    terminalreporter.write_line(
        "lost / run >1 are counted when the scenario ended; an XFAIL row stopped where"
        " its bug showed, so its counts are from that moment."
    )
