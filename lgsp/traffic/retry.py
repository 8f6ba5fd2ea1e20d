"""Retries of idempotent reads: which failures, how long to wait, and a budget.

Only reads are retried (an operation declared `writes=False`): a write that timed out may
have been done. Only a connection failure (upstream.unavailable) is retried: a timeout
already cost the caller the whole timeout, and a fault or a malformed answer would come
again. Waits grow exponentially with full jitter (so retries of many callers spread out),
and a budget keeps retries to a share of calls: when an upstream is failing hard, retries
would only multiply its load.
"""
from __future__ import annotations

import random

from lgsp.traffic.protection import RetryPolicy

RETRYABLE = frozenset({"upstream.unavailable"})
# Retries a quiet connection may make before its calls have earned any (tokens).
RESERVE = 3.0


def backoff(policy: RetryPolicy, retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, …): full jitter up to the exponential step."""
    return random.uniform(0, min(policy.max_backoff, policy.backoff * 2 ** (retry - 1)))


class RetryBudget:
    """Each call earns `ratio` of a retry, each retry spends one: over any stretch, retries are
    at most `ratio` × calls + RESERVE (the way Finagle and Envoy bound retries)."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.capacity = RESERVE if ratio > 0 else 0.0
        self.tokens = self.capacity

    def earn(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
