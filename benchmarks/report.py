"""Rows of results, and how they are printed: a text table, a markdown table, JSON.

The markdown table is printed ready to paste into the README's "Performance"
section; ``BENCH_JSON {...}`` on the last line holds the configuration, every row
and every single run, for machines to read.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

QUIET = 0.25
"""Cores used by other processes below which a run counts as undisturbed."""


@dataclass
class Row:
    scenario: str
    metric: str
    bridge: float | None
    rq: float | None = None
    ratio: float | None = None
    target: str = ""
    verdict: str = ""
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ratio_row(
    scenario: str,
    metric: str,
    bridge: float,
    rq: float,
    target: str = "(info)",
    ok: bool | None = None,
    note: str = "",
) -> Row:
    """A row comparing bridge with plain RQ; ``ok`` None means informational."""
    return Row(
        scenario,
        metric,
        bridge,
        rq,
        bridge / rq if rq else None,
        target,
        "" if ok is None else verdict(ok),
        note,
    )


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        row.metric,
        fmt(row.bridge),
        fmt(row.rq),
        fmt(row.ratio),
        row.target,
        row.verdict,
    ]


HEADERS = ["scenario", "metric", "bridge", "plain RQ", "ratio", "target", "verdict"]


def text_table(rows: list[Row]) -> str:
    table = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    notes = [f"  {r.scenario} / {r.metric}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["notes:", *notes]
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    """The rows as a GitHub markdown table (``|`` in text escaped)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    for row in rows:
        cells = [c.replace("|", "\\|") or " " for c in _cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_summary(raw: dict[str, Any]) -> dict[str, float]:
    """Median and highest load of other processes over every timed run."""
    runs = [r for value in raw.values() if isinstance(value, list) for r in value]
    other = [r["other_cores"] for r in runs if "other_cores" in r]
    steal = [r["steal_cores"] for r in runs if "steal_cores" in r]
    if not other:
        return {}
    return {
        "other_cores_median": statistics.median(other),
        "other_cores_max": max(other),
        "steal_cores_median": statistics.median(steal),
    }


def bench_json(config: dict[str, Any], elapsed: float, results: Results) -> str:
    payload = {
        "config": config,
        "elapsed_seconds": round(elapsed, 2),
        "background": noise_summary(results.raw),
        "results": [asdict(r) for r in results.rows],
        "runs": results.raw,
    }
    return "BENCH_JSON " + json.dumps(payload, separators=(",", ":"))
