"""Bulkhead: at most `limit` calls to one upstream under way at once in this worker.

A call over the limit waits up to `wait` seconds for a slot, then is refused
(upstream.busy), so a hanging upstream holds a bounded share of the worker's
sockets and memory and its callers hear quickly instead of piling up.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable


class BulkheadFull(Exception):
    """No slot came free within the wait."""


class Bulkhead:
    def __init__(self, limit: int, wait: float, *, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self.wait = wait
        self.in_use = 0
        self._slots = asyncio.Semaphore(limit)
        self.on_change = on_change or (lambda delta: None)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():
            if self.wait <= 0:
                raise BulkheadFull()
            try:
                async with asyncio.timeout(self.wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise BulkheadFull() from None
        else:
            await self._slots.acquire()  # free: returns at once
        self.in_use += 1
        self.on_change(1)
        try:
            yield
        finally:
            self.in_use -= 1
            self.on_change(-1)
            self._slots.release()
