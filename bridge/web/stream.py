"""``GET /api/stream``: server-sent events, one per task state change.

One shared poller (``EventHub``) reads ``task_events`` for every client at once, so
twenty open dashboards cost one indexed query per tick, not twenty. It keeps the
latest events in memory; a client resuming from an older ``Last-Event-ID`` than the
buffer holds catches up from the database once, then follows the hub.
"""

import asyncio
import bisect
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from bridge import store
from bridge.app import App

POLL_EVERY = 0.5
"""Seconds between the hub's looks at ``task_events`` (a finished task shows within it)."""
HEARTBEAT_EVERY = 15.0
"""Seconds of silence after which a client gets a comment line (keeps proxies open)."""
BUFFER = 5000
"""Events the hub keeps for clients that fall behind."""
BATCH = 1000
"""Events read per query."""

FIELDS = ("id", "task_id", "from_status", "to_status", "attempt", "at")


class EventHub:
    """The one reader of new events for every SSE client of this process.

    Each event is encoded once, as the bytes every client is sent; a client is handed
    everything new since its cursor in one chunk (found by bisection, not a scan).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.ids: list[int] = []
        self.chunks: list[bytes] = []
        self.last_id = 0
        self.changed = asyncio.Condition()
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.last_id = await run_in_threadpool(self._last_id)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._poll())

    def close_soon(self) -> None:
        """End every stream now, from a signal handler: the server is shutting down, and
        a live stream never ends by itself, so it would hold the shutdown until uvicorn
        cancels it (a traceback in the log)."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self._wake_closed()))

    async def _wake_closed(self) -> None:
        self.closed = True
        async with self.changed:
            self.changed.notify_all()

    async def stop(self) -> None:
        self.closed = True
        async with self.changed:
            self.changed.notify_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _last_id(self) -> int:
        with store.reading(self.app.engine) as session:
            return store.last_event_id(session=session)

    def _read(self, after: int, limit: int = BATCH) -> tuple[int, list[dict[str, Any]], bool]:
        """``(newest id read, the state changes among the rows, whether the batch was
        full)``. An audit row of an ignored report (``done -> done``) changed nothing: it
        is read past, never sent."""
        with store.reading(self.app.engine) as session:
            rows = store.events_after(session=session, after=after, limit=limit)
        changes = [
            {key: row[key] for key in FIELDS}
            for row in rows
            if row["from_status"] != row["to_status"]
        ]
        return (rows[-1]["id"] if rows else after), changes, len(rows) == limit

    async def _poll(self) -> None:
        while not self.closed:
            try:
                newest, fresh, full = await run_in_threadpool(self._read, self.last_id)
            except Exception:  # noqa: BLE001 (a locked or gone database: try next tick)
                newest, fresh, full = self.last_id, [], False
            if fresh:
                self.ids += [event["id"] for event in fresh]
                self.chunks += [sse(event) for event in fresh]
                if len(self.ids) > 2 * BUFFER:
                    del self.ids[:-BUFFER], self.chunks[:-BUFFER]
            if newest != self.last_id:
                self.last_id = newest
                async with self.changed:
                    self.changed.notify_all()
            if full:
                continue  # more waiting: read on without sleeping
            await asyncio.sleep(POLL_EVERY)

    def _floor(self) -> int:
        """Events after this id are all in the buffer."""
        return self.ids[0] - 1 if self.ids else self.last_id

    async def follow(self, after: int | None) -> AsyncIterator[bytes]:
        """SSE bytes of the events after ``after`` (None: from now on), in chunks, and a
        keep-alive comment for each quiet ``HEARTBEAT_EVERY``."""
        cursor = self.last_id if after is None else after
        while not self.closed:
            if cursor < self._floor():  # resumed from before the buffer: catch up once
                newest, events, _ = await run_in_threadpool(self._read, cursor)
                # Nothing left to read (pruned or cleaned away): go on from the buffer.
                cursor = newest if newest != cursor else self._floor()
                if events:
                    yield b"".join(sse(event) for event in events)
                continue
            if cursor < self.last_id:
                start = bisect.bisect_right(self.ids, cursor)
                cursor = self.last_id
                if start < len(self.ids):
                    yield b"".join(self.chunks[start:])
                    continue
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait(), HEARTBEAT_EVERY)
                except asyncio.TimeoutError:
                    yield sse(None)


def sse(event: dict[str, Any] | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['id']}\nevent: task\ndata: {data}\n\n".encode()
