"""One reader of the run-event log per API process, shared by every stream and `Prefer: wait`.

The shape of Dagster's Postgres event watcher: subscribers register a run and their own cursor;
one background task reads, every `interval_s`, the events after each watched run's lowest cursor
in a single query (core.run_events.events_after) and hands each subscriber the ones it has not
seen, in order. 500 open streams cost one database read per interval, not 500. Polling only: a
Postgres LISTEN/NOTIFY doorbell would cut the delay below the interval, at the price of one
dedicated connection per process and a second code path for SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from core import run_events
from core.db import Database
from core.run_events import RunEventView

log = logging.getLogger(__name__)


class Subscription:
    """One subscriber's view of a run's log: events strictly after `cursor`, each once, in order."""

    def __init__(self, workflow_id: str, cursor: int) -> None:
        self.workflow_id = workflow_id
        self.cursor = cursor
        self._queue: asyncio.Queue[RunEventView] = asyncio.Queue()

    def offer(self, event: RunEventView) -> None:
        # Only the next event in sequence: a poll that started from a later cursor (this
        # subscriber joined while it ran) is skipped, and the next poll reads from our cursor.
        if event.seq == self.cursor + 1:
            self.cursor = event.seq
            self._queue.put_nowait(event)

    async def next(self) -> RunEventView:
        return await self._queue.get()


class RunEventWatcher:
    def __init__(self, db: Database, interval_s: float) -> None:
        self.db = db
        self.interval_s = interval_s
        self._subscribers: dict[str, set[Subscription]] = {}
        self._watching = asyncio.Event()  # set while anyone subscribes: no reads when idle
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever(), name="run-event-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def subscribe(self, workflow_id: str, after: int) -> AsyncIterator[Subscription]:
        """The run's events after seq `after`, for as long as the block runs."""
        subscription = Subscription(workflow_id, after)
        self._subscribers.setdefault(workflow_id, set()).add(subscription)
        self._watching.set()
        try:
            yield subscription
        finally:
            watchers = self._subscribers[workflow_id]
            watchers.discard(subscription)
            if not watchers:
                del self._subscribers[workflow_id]
            if not self._subscribers:
                self._watching.clear()

    async def wait_until_final(self, workflow_id: str, after: int, timeout_s: float) -> bool:
        """Wait for the run's final event after seq `after`. False when `timeout_s` ran out."""
        async with self.subscribe(workflow_id, after) as subscription:
            try:
                async with asyncio.timeout(timeout_s):
                    while not (await subscription.next()).kind.is_final:
                        pass
            except TimeoutError:
                return False
        return True

    async def _poll_forever(self) -> None:
        while True:
            await self._watching.wait()
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a database blip must not end every stream
                log.exception("Run events - poll failed; retrying in %.2f s", self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def poll(self) -> None:
        """One read for every watched run, from the lowest cursor among its subscribers."""
        cursors = {
            workflow_id: min(s.cursor for s in subscribers)
            for workflow_id, subscribers in self._subscribers.items()
        }
        if not cursors:
            return
        events = await asyncio.to_thread(self._read, cursors)
        for event in events:
            for subscription in list(self._subscribers.get(event.workflow_id, ())):
                subscription.offer(event)

    def _read(self, cursors: Mapping[str, int]) -> list[RunEventView]:
        with self.db.read() as session:
            return run_events.events_after(session, cursors)
