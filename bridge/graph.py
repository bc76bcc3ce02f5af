"""Task specifications and graph checks: pure, no I/O, so every rule about what
may be added is tested without a database."""

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from bridge.errors import BridgeError

SPEC_KEYS = frozenset(
    {
        "id",
        "description",
        "kind",
        "payload",
        "dependencies",
        "priority",
        "max_attempts",
        "timeout",
        "queue",
        "pool",
        "not_before",
        "delay",
    }
)
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
"""What a queue or pool name may be: it becomes part of Redis keys and of log lines."""
DEFAULT_MAX_PAYLOAD = 1024 * 1024
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""What a database integer column holds."""


class GraphError(BridgeError, ValueError):
    """Input that cannot be added; the message is the one line the user sees."""


class DuplicateIdError(GraphError):
    """A task id given twice, or already stored (the HTTP API answers 409)."""


class DependencyError(GraphError):
    """A dependency on an unknown task or on itself, or a cycle (the HTTP API answers 422)."""


@dataclass(frozen=True)
class TaskSpec:
    id: str
    description: str = ""
    kind: str = "noop"
    payload: Any = None
    dependencies: tuple[str, ...] = field(default=())
    priority: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    """Seconds an attempt may run; fractions allowed."""
    queue: str | None = None
    """The RQ queue; None: the ``BRIDGE_QUEUE`` setting of whoever adds it."""
    pool: str | None = None
    not_before: str | None = None
    """Earliest dispatch, UTC in the store's text form (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    delay: float | None = None
    """Seconds after it is added before it may be dispatched (becomes ``not_before``)."""
    local_id: str | None = None
    """The id as the graph wrote it, when ``scope`` derived ``id`` from a run's name."""

    def payload_json(self) -> str | None:
        return None if self.payload is None else json.dumps(self.payload, ensure_ascii=False)


def spec_from_mapping(raw: Mapping[str, Any], where: str = "task") -> TaskSpec:
    """Build a spec from a JSON object, refusing anything ambiguous."""
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise GraphError(f"{where}: unknown key(s) {', '.join(unknown)}")
    task_id = raw.get("id")
    if not isinstance(task_id, str):
        raise GraphError(f"{where}: 'id' must be a string")
    deps = raw.get("dependencies")
    deps = [] if deps is None else deps
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise GraphError(f"{where}: 'dependencies' must be a list of task ids")
    return make_spec(
        task_id=task_id,
        description=_typed(raw, "description", str, "", where),
        kind=_typed(raw, "kind", str, "noop", where),
        payload=raw.get("payload"),
        dependencies=deps,
        priority=_typed(raw, "priority", int, 0, where),
        max_attempts=_typed(raw, "max_attempts", int, 1, where),
        timeout=_seconds_field(raw, "timeout", where),
        queue=_typed(raw, "queue", str, None, where),
        pool=_typed(raw, "pool", str, None, where),
        not_before=_typed(raw, "not_before", str, None, where),
        delay=_delay_field(raw, where),
    )


def _seconds_field(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraphError(f"{where}: {key!r} must be a number of seconds")
    return value


def _delay_field(raw: Mapping[str, Any], where: str) -> float | None:
    value = raw.get("delay")
    if value is None or isinstance(value, str):
        return value
    return _seconds_field(raw, "delay", where)


_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DELAY_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delay(value: float | str | timedelta, task_id: str = "") -> float:
    """Seconds in ``30``, ``90s``, ``10m``, ``2h`` or ``1d`` (or a ``timedelta``); zero or more."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GraphError(
            f"task {task_id!r}: delay must be seconds, a duration such as 10m, or a timedelta"
        )
    if isinstance(value, str):
        match = _DELAY.match(value)
        if not match:
            raise GraphError(
                f"task {task_id!r}: bad delay {value!r}: give seconds or a number with"
                " s, m, h or d (e.g. 90s, 10m, 2h)"
            )
        value = float(match.group(1)) * _DELAY_UNITS[match.group(2)]
    if not math.isfinite(value) or value < 0 or value > 10 * 365 * 86400:
        raise GraphError(f"task {task_id!r}: delay must be between 0 and 10 years")
    return float(value)


def parse_time(value: str | datetime, task_id: str = "") -> str:
    """An ISO 8601 time, or a ``datetime`` (UTC when it names no zone), as the store
    writes times."""
    if not isinstance(value, (str, datetime)):
        raise GraphError(
            f"task {task_id!r}: not_before must be an ISO 8601 time or a datetime,"
            f" got {type(value).__name__}"
        )
    try:
        moment = (
            value
            if isinstance(value, datetime)
            else datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        )
    except ValueError:
        raise GraphError(
            f"task {task_id!r}: not_before {value!r} is not an ISO 8601 time"
            " (e.g. 2026-12-01T02:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def make_spec(
    *,
    task_id: str,
    description: str = "",
    kind: str = "noop",
    payload: Any = None,
    dependencies: Iterable[str] = (),
    priority: int = 0,
    max_attempts: int = 1,
    timeout: float | None = None,
    queue: str | None = None,
    pool: str | None = None,
    not_before: str | datetime | None = None,
    delay: float | str | timedelta | None = None,
) -> TaskSpec:
    if not task_id or not task_id.strip():
        raise GraphError("task id must not be empty")
    for name, value in (
        ("priority", priority),
        ("max_attempts", max_attempts),
        ("timeout", timeout),
    ):
        if value is not None and not INT_MIN <= value <= INT_MAX:
            raise GraphError(f"task {task_id!r}: {name} is out of range")
    for value in (task_id, description, kind, *dependencies):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise GraphError(f"task {task_id!r}: text that is not valid Unicode") from None
    if not kind:
        raise GraphError(f"task {task_id!r}: kind must not be empty")
    if max_attempts < 1:
        raise GraphError(f"task {task_id!r}: max_attempts must be at least 1")
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= INT_MAX):
        raise GraphError(f"task {task_id!r}: timeout must be a number of seconds above 0")
    for name, value in (("queue", queue), ("pool", pool)):
        if value is not None and not QUEUE_NAME.fullmatch(value):
            raise GraphError(
                f"task {task_id!r}: {name} {value!r} must be 1 to 100 letters, digits or _.:-"
            )
    if not_before is not None:
        not_before = parse_time(not_before, task_id)
    if delay is not None:
        delay = parse_delay(delay, task_id)
    unique_deps = list(dict.fromkeys(dependencies))  # in order; linear for a wide fan-in
    return TaskSpec(
        id=task_id,
        description=description,
        kind=kind,
        payload=payload,
        dependencies=tuple(unique_deps),
        priority=priority,
        max_attempts=max_attempts,
        timeout=timeout,
        queue=queue,
        pool=pool,
        not_before=not_before,
        delay=delay,
    )


def _typed(raw: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise GraphError(f"{where}: {key!r} must be {'an integer' if kind is int else 'a string'}")
    return value


RUN_SEPARATOR = "/"
"""Between a scoped run's name and a task's id in the stored id: ``nightly-1/fetch``."""


def scoped_id(run: str, task_id: str) -> str:
    return f"{run}{RUN_SEPARATOR}{task_id}"


def scope(specs: Iterable[TaskSpec], run: str) -> list[TaskSpec]:
    """The specs with ids scoped to ``run``: each id, and each dependency on a task of
    the same graph, becomes ``run/id``; a dependency on any other id names a stored
    task as is (a run may wait for tasks of another)."""
    specs = list(specs)
    ids = unique_ids(specs)
    return [
        replace(
            spec,
            id=scoped_id(run, spec.id),
            local_id=spec.id,
            dependencies=tuple(scoped_id(run, d) if d in ids else d for d in spec.dependencies),
        )
        for spec in specs
    ]


def parse_graph(text: str, source: str = "file") -> list[TaskSpec]:
    """Parse a JSON graph file: a list of task objects."""
    data = _load_json(text, source)
    if not isinstance(data, list):
        raise GraphError(f"{source} must hold a JSON list of task objects")
    specs = []
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise GraphError(f"{source}: item {index} is not an object")
        label = f"{source}: item {index}" + (
            f" ({raw['id']!r})" if isinstance(raw.get("id"), str) else ""
        )
        specs.append(spec_from_mapping(raw, label))
    return specs


def parse_payload(text: str | None) -> Any:
    if text is None:
        return None
    return _load_json(text, "--payload")


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _load_json(text: str, source: str) -> Any:
    """JSON that is valid, not absurdly nested, and storable as UTF-8 text."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise GraphError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise GraphError(f"{source} is nested too deeply") from None
    except UnicodeEncodeError:
        raise GraphError(
            f"{source} holds text that is not valid Unicode (a lone surrogate)"
        ) from None
    return data


def check_new_graph(
    specs: list[TaskSpec],
    *,
    existing: Iterable[str],
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> None:
    """Refuse duplicates, unknown dependencies, oversize payloads and cycles.

    ``existing`` holds the ids already stored that the new specs refer to. A cycle
    can only close among new tasks: stored tasks never depend on tasks added later.
    """
    new_ids = unique_ids(specs)
    for spec in specs:
        payload = spec.payload_json()
        if payload is not None and len(payload.encode()) > max_payload:
            raise GraphError(
                f"task {spec.id!r}: payload is {len(payload.encode())} bytes,"
                f" over the limit of {max_payload}"
            )
    known = set(existing)
    for spec in specs:
        for dep in spec.dependencies:
            if dep == spec.id:
                raise DependencyError(f"task {spec.id!r} depends on itself")
            if dep not in new_ids and dep not in known:
                raise DependencyError(f"task {spec.id!r} depends on unknown task {dep!r}")
    cycle = find_cycle(specs)
    if cycle:
        raise DependencyError("dependency cycle: " + " -> ".join(repr(t) for t in cycle))


def unique_ids(specs: Iterable[TaskSpec]) -> set[str]:
    """The ids of ``specs``; a duplicate is an error."""
    ids: set[str] = set()
    for spec in specs:
        if spec.id in ids:
            raise DuplicateIdError(f"duplicate task id {spec.id!r}")
        ids.add(spec.id)
    return ids


def find_cycle(specs: list[TaskSpec]) -> list[str] | None:
    """A cycle among the specs (first id repeated at the end), or None. Kahn's algorithm."""
    ids = {spec.id for spec in specs}
    deps = {spec.id: [d for d in spec.dependencies if d in ids] for spec in specs}
    waiting = {task: len(d) for task, d in deps.items()}
    dependents: dict[str, list[str]] = {}
    for task, task_deps in deps.items():
        for dep in task_deps:
            dependents.setdefault(dep, []).append(task)
    ready = [task for task, count in waiting.items() if count == 0]
    while ready:
        task = ready.pop()
        for child in dependents.get(task, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
        del waiting[task]
    if not waiting:
        return None
    # Every task left waits on another task left: walking dependencies must loop.
    start = next(iter(waiting))
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d in waiting)
    return path[seen[node] :] + [node]


def same_definition(spec: TaskSpec, stored: TaskSpec) -> bool:
    """Whether re-adding ``spec`` over ``stored`` is a harmless repeat (``bridge run`` resumes)."""
    return (
        spec.description == stored.description
        and spec.kind == stored.kind
        and spec.payload == stored.payload
        and list(spec.dependencies) == list(stored.dependencies)
        and spec.priority == stored.priority
        and spec.max_attempts == stored.max_attempts
        and spec.timeout == stored.timeout
        and (spec.queue is None or spec.queue == stored.queue)
        and spec.pool == stored.pool
    )
