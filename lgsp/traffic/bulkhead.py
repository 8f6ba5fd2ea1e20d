"""Bulkhead: at most `limit` calls to one upstream under way at once in this worker.

A call over the limit waits up to `wait` seconds for a slot, then is refused
(upstream.busy), so a hanging upstream holds a bounded share of the worker's
sockets and memory and its callers hear quickly instead of piling up.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Callable


class BulkheadFull(Exception):
    """No slot came free within the wait."""


class Bulkhead:
    """A counter with a queue of waiters, first come first served. The free case is a plain
    increment (this is on every call of the hot path); a freed slot passes straight to the
    oldest waiter."""

    def __init__(self, limit: int, wait: float, *, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self.wait = wait
        self.in_use = 0
        self._waiters: deque[asyncio.Future] = deque()
        self.on_change = on_change or (lambda delta: None)

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            self.on_change(1)
            return
        if self.wait <= 0:
            raise BulkheadFull()
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(self.wait):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(turn)
            if isinstance(exc, TimeoutError):
                raise BulkheadFull() from None
            raise

    def release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on: in_use stays
                return
        self.in_use -= 1
        self.on_change(-1)
