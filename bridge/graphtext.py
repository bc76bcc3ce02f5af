"""A task graph as text: Mermaid and Graphviz DOT (``bridge graph``, ``GET /api/graph``).

Pure functions over nodes (dicts with id, status, kind, description) and edges
``(dependency, task)``. Ids and labels are escaped: any string is safe to draw.
"""

from collections.abc import Mapping, Sequence
from typing import Any

COLOURS = {
    "available": "#e5e7eb",
    "queued": "#bfdbfe",
    "working": "#fde68a",
    "done": "#bbf7d0",
    "failed": "#fecaca",
    "cancelled": "#d1d5db",
}


def _mermaid_label(text: str) -> str:
    """Mermaid's quoted label: ``"`` and markup-significant characters as entities."""
    return "".join(
        f"#{ord(c)};" if c in '"<>&#`[]{}()|\\' or not c.isprintable() else c for c in text
    )


def mermaid(nodes: Sequence[Mapping[str, Any]], edges: Sequence[tuple[str, str]]) -> str:
    names = {node["id"]: f"t{index}" for index, node in enumerate(nodes)}
    lines = ["flowchart LR"]
    for node in nodes:
        lines.append(f'  {names[node["id"]]}["{_mermaid_label(node["id"])}"]:::{node["status"]}')
    for dependency, task in edges:
        if dependency in names and task in names:
            lines.append(f"  {names[dependency]} --> {names[task]}")
    for status, colour in COLOURS.items():
        lines.append(f"  classDef {status} fill:{colour},stroke:#374151,color:#111827")
    return "\n".join(lines) + "\n"


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + "".join(c if c.isprintable() else " " for c in escaped) + '"'


def dot(nodes: Sequence[Mapping[str, Any]], edges: Sequence[tuple[str, str]]) -> str:
    lines = ["digraph bridge {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
    ids = {node["id"] for node in nodes}
    for node in nodes:
        colour = COLOURS.get(node["status"], "#ffffff")
        label = f"{node['id']}\n{node['status']}"
        lines.append(
            f"  {_dot_string(node['id'])} [label={_dot_string(label)},"
            f' fillcolor="{colour}", tooltip={_dot_string(node.get("description") or "")}];'
        )
    for dependency, task in edges:
        if dependency in ids and task in ids:
            lines.append(f"  {_dot_string(dependency)} -> {_dot_string(task)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
