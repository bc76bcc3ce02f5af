"""The Python API: ``Client`` and ``Run``, a skin over ``bridge.usecases`` like the CLI.

``Client()`` reads the same settings as the CLI (``BRIDGE_DATABASE_URL``,
``BRIDGE_REDIS_URL``, ``BRIDGE_QUEUE``...) for whatever it is not given, and every
method calls one use case: no SQL and no Redis of its own. Errors are ``BridgeError``
subclasses (``GraphError`` for a graph that cannot be added) whose message is the
line the CLI prints; what the CLI prints as ``warning:`` is a ``BridgeWarning``.
"""

import os
import warnings
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from bridge import usecases
from bridge.app import App
from bridge.building import Graph, specs_of
from bridge.graph import GraphError, TaskSpec
from bridge.runner import EXIT_TIMEOUT
from bridge.settings import Settings
from bridge.states import TaskStatus
from bridge.store import task_dict


class BridgeWarning(UserWarning):
    """Something worked, with a caveat (a kind no handler here registers, Redis away)."""


def _warn(lines: Iterable[str]) -> None:
    for line in lines:
        warnings.warn(line, BridgeWarning, stacklevel=3)


class Client:
    """A connection to one bridge database (and its Redis, when a call needs it).

    Arguments left out come from the environment, as for the CLI. Use it as a context
    manager, or call ``close()``. A missing SQLite database is created on first use.
    """

    def __init__(
        self,
        database_url: str | None = None,
        redis_url: str | None = None,
        queue: str | None = None,
    ) -> None:
        settings = Settings.from_env(
            os.environ, database_url=database_url, redis_url=redis_url, queue=queue
        )
        self._app = App(settings, create=True)

    @property
    def settings(self) -> Settings:
        return self._app.settings

    def close(self) -> None:
        """Release the database and Redis connections (the client may be used again)."""
        self._app.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- adding

    def submit(
        self, tasks: Graph | Iterable[TaskSpec | dict[str, Any]], run: str | None = None
    ) -> "Run":
        """Add a graph (a ``Graph``, or a list of task dicts as in a graph file) as a new
        run, all or nothing, and return it; a running dispatcher starts on it at once.

        With ``run`` the run has that name (taken already: ``GraphError``) and the
        tasks' ids are stored as ``run/id``; without, they keep their ids and the run
        gets an automatic name. A graph without tasks is a ``GraphError``.
        """
        specs = specs_of(tasks)
        if not specs:  # as ``bridge submit``: an empty run would be an empty promise
            raise GraphError("the graph has no tasks: nothing to submit")
        added = usecases.add(self._app, specs, run=run)
        _warn(added.warnings)
        assert added.run is not None
        return Run(self, added.run)

    # ---------------------------------------------------------------- reading

    def get(self, task_id: str) -> dict[str, Any]:
        """One task as ``bridge show ID --json`` prints it (``why``: why it is where it
        is); ``output`` is decoded. ``task_id`` is the stored id (``run/id`` in a named run)."""
        return usecases.show_task(self._app, task_id).to_dict()

    def tasks(self, *, run: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Tasks as ``bridge list --json`` prints them: all, or of one run and/or status."""
        wanted = None if status is None else TaskStatus(status)
        return [task_dict(t) for t in usecases.list_tasks(self._app, wanted, run=run)]

    def status(self) -> dict[str, Any]:
        """``bridge status --json``: dispatchers, workers, counts (Redis may be away)."""
        result = usecases.status(self._app)
        _warn(result.warnings)
        return result.to_dict()

    def runs(self) -> list[dict[str, Any]]:
        """``bridge runs --json``: every run with ``name``, ``state``, ``counts``..."""
        return [view.to_dict() for view in usecases.list_runs(self._app)]

    def run(self, name: str) -> "Run":
        """The run of that name (none: ``TaskStateError``)."""
        usecases.get_run(self._app, name)
        return Run(self, name)

    # ---------------------------------------------------------------- changing

    def retry(
        self, task_id: str | None = None, *, run: str | None = None, failed: bool = False
    ) -> list[str]:
        """Put a failed or cancelled task back to available; or, with ``run``, every
        failed (and, unless ``failed``, cancelled) task of it. Returns the ids."""
        if (task_id is None) == (run is None):
            raise TypeError("give a task id or run=, not both")
        if run is not None:
            retried = usecases.retry_run(self._app, run, failed_only=failed)
            _warn(retried.warnings)
            return retried.retried
        result = usecases.retry(self._app, task_id)  # type: ignore[arg-type]
        _warn(result.warnings)
        return [result.task_id]

    def cancel(self, task_id: str | None = None, *, run: str | None = None) -> list[str]:
        """Cancel a task, or with ``run`` every unfinished task of it. Returns the ids."""
        if (task_id is None) == (run is None):
            raise TypeError("give a task id or run=, not both")
        if run is not None:
            cancelled = usecases.cancel_run(self._app, run)
            _warn(cancelled.warnings)
            return [c.task_id for c in cancelled.cancelled]
        result = usecases.cancel(self._app, task_id)  # type: ignore[arg-type]
        _warn(result.warnings)
        return [result.task_id]

    def delete(
        self, task_ids: Sequence[str] = (), *, run: str | None = None, force: bool = False
    ) -> list[str]:
        """``bridge delete ID...`` or ``bridge delete --run NAME [--force]``; all or
        nothing. Returns the deleted ids."""
        if bool(task_ids) == (run is not None):
            raise TypeError("give task ids or run=, not both")
        if run is not None:
            result = usecases.delete_run(self._app, run, force=force)
        else:
            result = usecases.delete_tasks(self._app, list(task_ids))
        _warn(result.warnings)
        return result.deleted


class Run:
    """A submitted graph: wait for it, read its results, retry or cancel it."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Run({self.name!r})"

    @property
    def _app(self) -> App:
        return self.client._app

    @property
    def state(self) -> str:
        """``running``, ``done``, ``failed``, ``cancelled`` or ``empty``."""
        return usecases.get_run(self._app, self.name).state

    def info(self) -> dict[str, Any]:
        """The run as ``bridge runs --json`` shows it."""
        return usecases.get_run(self._app, self.name).to_dict()

    def tasks(self) -> list[dict[str, Any]]:
        """The run's tasks as ``bridge list --run NAME --json`` prints them."""
        return self.client.tasks(run=self.name)

    def ids(self) -> dict[str, str]:
        """Each task's id as written -> its stored id (``NAME/id`` in a named run)."""
        return {_written(t): t["id"] for t in self.tasks()}

    def wait(self, timeout: float | None = None) -> dict[str, str]:
        """Block until every task of the run is finished or nothing more of it can run
        (as ``bridge wait --run``); return each task's id as written -> final state.

        ``TimeoutError`` after ``timeout`` seconds. Something must run the graph: a
        dispatcher and workers (``bridge dispatch``, ``bridge worker``).
        """
        waited = usecases.wait(self._app, run=self.name, timeout=timeout)
        if waited.code == EXIT_TIMEOUT:
            raise TimeoutError(f"run {self.name!r} is not finished after {timeout:g}s")
        return {_written(t): t["status"] for t in self.tasks()}

    def results(self) -> dict[str, Any]:
        """Each done task's id as written -> its output, decoded from JSON."""
        return {_written(t): t["output"] for t in self.tasks() if t["status"] == "done"}

    def retry(self, *, failed: bool = False) -> list[str]:
        """Every failed (and, unless ``failed``, cancelled) task back to available."""
        return self.client.retry(run=self.name, failed=failed)

    def cancel(self) -> list[str]:
        """Cancel every unfinished task of the run."""
        return self.client.cancel(run=self.name)

    def delete(self, *, force: bool = False) -> list[str]:
        """Delete the finished run (``force``: cancel what is unfinished first)."""
        return self.client.delete(run=self.name, force=force)


def _written(task: dict[str, Any]) -> str:
    return task["local_id"] or task["id"]
