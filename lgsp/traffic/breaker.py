"""Circuit breaker of one connection in one worker process.

closed ──(N consecutive failures, or the failure ratio over the window)──► open
open ──(open_seconds later, the next call is a probe)──► half-open
half-open ──(a probe succeeds)──► closed;  ──(a probe fails)──► open again

While open, calls are refused at once (the caller hears when to try again) instead of
each waiting out the upstream's timeout. State is per process, as in Envoy and Kong: each
worker learns of a failing upstream from its own calls, within `failures` calls.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

from lgsp.traffic.protection import BreakerPolicy

CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # as exported in /metrics


class CircuitOpen(Exception):
    """The circuit is open: the upstream is not called."""

    def __init__(self, retry_after: float):
        super().__init__(f"circuit open, retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class Window:
    """Calls and failures over the last `seconds`, in one-second buckets (bounded memory)."""

    def __init__(self, seconds: float, clock: Callable[[], float]):
        self.seconds = seconds
        self.clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures]

    def add(self, failed: bool) -> None:
        now = int(self.clock())
        self._expire(now)
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0, 0])
        self._buckets[-1][1] += 1
        self._buckets[-1][2] += int(failed)

    def totals(self) -> tuple[int, int]:
        self._expire(int(self.clock()))
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()

    def _expire(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.seconds:
            self._buckets.popleft()


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None):
        self.policy = policy
        self.clock = clock
        self.on_change = on_change or (lambda state: None)
        self.state = CLOSED
        self.consecutive = 0
        self.window = Window(policy.window, clock)
        self.opened_at = 0.0
        self.probing = 0

    def retry_after(self) -> float:
        """Seconds until a probe may be made (0 when the circuit is not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.policy.open_seconds - self.clock())

    def admit(self) -> bool:
        """Let a call through, or raise CircuitOpen. True when the call is a half-open probe
        (its outcome must be reported with `record`, or `release` if it had none)."""
        if self.state == OPEN:
            wait = self.retry_after()
            if wait > 0:
                raise CircuitOpen(wait)
            self._move(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self.probing >= self.policy.probes:
                raise CircuitOpen(1.0)  # a probe is under way; its outcome decides
            self.probing += 1
            return True
        return False

    def record(self, failed: bool, probe: bool) -> None:
        if probe:
            self.probing = max(0, self.probing - 1)
        if self.state == HALF_OPEN and probe:
            self._move(OPEN if failed else CLOSED)
            return
        if self.state != CLOSED:
            return  # a call let through before the circuit opened: its outcome is old news
        self.window.add(failed)
        self.consecutive = self.consecutive + 1 if failed else 0
        if failed and self._tripped():
            self._move(OPEN)

    def release(self, probe: bool) -> None:
        """A call that ended without a verdict on the upstream (e.g. cancelled)."""
        if probe:
            self.probing = max(0, self.probing - 1)

    def _tripped(self) -> bool:
        if self.consecutive >= self.policy.failures:
            return True
        calls, failures = self.window.totals()
        return calls >= self.policy.min_calls and failures / calls >= self.policy.failure_ratio

    def _move(self, state: str) -> None:
        if state == OPEN:
            self.opened_at = self.clock()
        if state == CLOSED:
            self.consecutive = 0
            self.window.clear()
        if state != HALF_OPEN:
            self.probing = 0
        if state != self.state:
            self.state = state
            self.on_change(state)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0 (that would invite an immediate retry storm)."""
    return str(max(1, math.ceil(seconds)))
