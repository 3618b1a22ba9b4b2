"""Admission control: a bounded number of running executions and a bounded queue.

Beyond `concurrency` running and `max_queue` waiting, a call is refused at once with a hint of
when to retry, so overload costs the server neither memory nor threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["Admission", "Overloaded"]


class Overloaded(Exception):
    """Every slot is busy and the queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"server busy: all execution slots and queue places are taken; "
                         f"retry in {retry_after:.2f}s")
        self.retry_after = retry_after


class Admission:
    """Slots for running executions plus a bounded wait queue (one per event loop)."""

    def __init__(self, concurrency: int, max_queue: int) -> None:
        self.concurrency = concurrency
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0
        self._running = 0
        self._recent_run_s = 0.01

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold an execution slot; yields the seconds spent queued. Raises Overloaded."""
        if self._slots.locked() and self._waiting >= self.max_queue:
            raise Overloaded(self._retry_hint())
        queued_at = time.perf_counter()
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        started = time.perf_counter()
        try:
            yield started - queued_at
        finally:
            self._running -= 1
            # An exponential average of run time makes the retry hint track the load.
            self._recent_run_s = 0.9 * self._recent_run_s + 0.1 * (time.perf_counter() - started)
            self._slots.release()

    def _retry_hint(self) -> float:
        backlog = (self._waiting + self._running) / max(self.concurrency, 1)
        return max(0.05, min(30.0, backlog * self._recent_run_s))
