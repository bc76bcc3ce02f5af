"""``Graph``: a task graph built in Python code, the same thing a graph file holds.

Pure (no I/O): ``Client.submit`` adds it. Each ``task()`` is checked at once where it
can be (a duplicate id, a task depending on itself, a reference from another graph);
an unknown dependency or a cycle (possible with ids given as strings, which may also
name tasks already stored) is refused when the graph is submitted, with the same one
line the CLI prints. ``check()`` applies those rules to the graph alone.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bridge import graph
from bridge.graph import GraphError, TaskSpec


@dataclass(frozen=True)
class TaskRef:
    """What ``Graph.task`` returns: a handle to name the task in ``after=``."""

    id: str
    """The id as written (within a named run it is stored as ``run/id``)."""
    graph_key: int = 0

    def __str__(self) -> str:
        return self.id


Dependency = TaskRef | str
"""A dependency: a task of this graph (its ref, or its id) or the id of a stored task."""


class Graph:
    """Tasks and their dependencies, built in code::

        g = Graph()
        fetch = g.task("fetch", kind="http_get", payload={"url": "https://example.com"})
        parse = g.task("parse", kind="parse", after=[fetch])

    Every field a graph file's task has is a keyword of ``task``.
    """

    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}

    def task(
        self,
        id: str,
        *,
        kind: str = "noop",
        payload: Any = None,
        after: Iterable[Dependency] | Dependency = (),
        description: str = "",
        priority: int = 0,
        max_attempts: int = 1,
        timeout: float | None = None,
        queue: str | None = None,
        pool: str | None = None,
        not_before: str | datetime | None = None,
        delay: float | str | timedelta | None = None,
    ) -> TaskRef:
        """Add a task; ``after`` lists what it waits for. Returns its ref.

        ``not_before``: an ISO 8601 time or a ``datetime`` (no zone: UTC); ``delay``:
        seconds, ``"90s"``/``"10m"``/``"2h"``/``"1d"`` or a ``timedelta``.

        ``GraphError`` at once for a bad field, a duplicate id, a task depending on
        itself or on a ref of another graph.
        """
        if not isinstance(id, str):
            raise GraphError(f"task id must be a string, got {type(id).__name__}")
        if id in self._specs:
            raise GraphError(f"duplicate task id {id!r}")
        if isinstance(after, (TaskRef, str)):
            after = [after]
        dependencies = [self._dependency(id, dep) for dep in after]
        try:
            json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise GraphError(f"task {id!r}: payload is not JSON: {exc}") from None
        spec = graph.make_spec(
            task_id=id,
            description=description,
            kind=kind,
            payload=payload,
            dependencies=dependencies,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            queue=queue,
            pool=pool,
            not_before=not_before,
            delay=delay,
        )
        if id in spec.dependencies:
            raise GraphError(f"task {id!r} depends on itself")
        self._specs[id] = spec
        return TaskRef(id, self._key)

    @property
    def _key(self) -> int:
        return id(self)

    def _dependency(self, task_id: str, dep: Dependency) -> str:
        if isinstance(dep, TaskRef):
            if dep.graph_key != self._key:
                raise GraphError(
                    f"task {task_id!r}: dependency {dep.id!r} is a task of another graph"
                    " (name a stored task by its id instead)"
                )
            return dep.id
        if isinstance(dep, str):
            return dep
        raise GraphError(
            f"task {task_id!r}: a dependency must be a task ref or an id, got {type(dep).__name__}"
        )

    @property
    def specs(self) -> list[TaskSpec]:
        """The tasks in the order they were added."""
        return list(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.specs)

    def __contains__(self, task: object) -> bool:
        return (task.id if isinstance(task, TaskRef) else task) in self._specs

    def check(self, existing: Iterable[str] = ()) -> None:
        """Refuse an unknown dependency (not in the graph nor in ``existing``) or a
        cycle, with the message the CLI prints for a graph file."""
        graph.check_new_graph(self.specs, existing=existing)

    def to_list(self) -> list[dict[str, Any]]:
        """The graph as a graph file's list of task objects (fields left at their
        defaults are left out)."""
        return [_as_mapping(spec) for spec in self._specs.values()]

    def write(self, path: str | Path) -> None:
        """Write the graph as a graph file (for ``bridge run``, ``submit``, ``schedule``)."""
        text = json.dumps(self.to_list(), indent=2, ensure_ascii=False)
        Path(path).write_text(text + "\n", encoding="utf-8")


def _as_mapping(spec: TaskSpec) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": spec.id}
    defaults = TaskSpec(id=spec.id)
    for key in sorted(graph.SPEC_KEYS - {"id"}):
        value = getattr(spec, key)
        if value == getattr(defaults, key):
            continue
        if key == "dependencies":
            value = list(value)
        elif key == "not_before":
            value = value.replace(" ", "T") + "Z"
        raw[key] = value
    return raw


def specs_of(source: "Graph | Iterable[TaskSpec | dict[str, Any]]") -> list[TaskSpec]:
    """The specs of a ``Graph``, or of a list of task dicts (as in a graph file) or
    ``TaskSpec``s; a bad item is a ``GraphError``."""
    if isinstance(source, Graph):
        return source.specs
    if isinstance(source, (str, bytes, dict)):
        raise GraphError("submit a Graph or a list of tasks")
    specs = []
    for index, item in enumerate(source):
        if isinstance(item, TaskSpec):
            specs.append(item)
        elif isinstance(item, dict):
            label = f"item {index}" + (
                f" ({item['id']!r})" if isinstance(item.get("id"), str) else ""
            )
            specs.append(graph.spec_from_mapping(item, label))
        else:
            raise GraphError(f"item {index}: a task is a dict or a TaskSpec")
    return specs
