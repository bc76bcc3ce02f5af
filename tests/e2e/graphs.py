"""Task graphs for end-to-end tests."""

from pathlib import Path
from typing import Any


def mixed_graph(log: Path, size: int = 100, sleep: float = 0.0) -> list[dict[str, Any]]:
    """Chains, fan-out and fan-in: a root, 8 chains of 5, leaves fanning out, merges, an end."""
    tasks: list[dict[str, Any]] = []

    def add(task_id: str, deps: list[str]) -> None:
        tasks.append(
            {
                "id": task_id,
                "description": f"task {task_id}",
                "kind": "record",
                "payload": {"log": str(log), "name": task_id, "value": len(tasks), "sleep": sleep},
                "dependencies": deps,
            }
        )

    add("root", [])
    for chain in range(8):
        for link in range(5):
            add(f"chain{chain}-{link}", [f"chain{chain}-{link - 1}" if link else "root"])
    leaves = size - len(tasks) - 10
    for leaf in range(leaves):
        add(f"leaf{leaf}", [f"chain{leaf % 8}-4"])
    for merge in range(9):
        add(f"merge{merge}", [f"leaf{n}" for n in range(merge, leaves, 9)])
    add("end", [f"merge{m}" for m in range(9)])
    assert len(tasks) == size
    return tasks
