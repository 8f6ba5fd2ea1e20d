"""The delivery settings (environment): retries, backoff, maximum age, leases, concurrency."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import cache


def _number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@cache
def _max_age(default: float) -> float:
    return _number("LGSP_DELIVERY_MAX_AGE", default)


@dataclass(frozen=True)
class Policy:
    max_age: float = 3 * 24 * 3600   # seconds a message may wait before it is dead-lettered
    backoff_base: float = 1.0        # first retry after about this long, doubling each time
    backoff_cap: float = 300.0       # never longer than this between attempts
    lease: float = 60.0              # a claim held longer than this (a killed worker's) is taken again
    concurrency: int = 16            # deliveries in flight per worker process
    poll: float = 0.2                # seconds between looks at the queue when idle
    gather: float = 0.05             # seconds: after a claim that emptied the queue, the next waits this long

    @classmethod
    def from_environment(cls) -> Policy:
        return cls(
            max_age=_number("LGSP_DELIVERY_MAX_AGE", cls.max_age),
            backoff_base=_number("LGSP_DELIVERY_BACKOFF", cls.backoff_base),
            backoff_cap=_number("LGSP_DELIVERY_BACKOFF_CAP", cls.backoff_cap),
            lease=_number("LGSP_DELIVERY_LEASE", cls.lease),
            concurrency=max(1, int(_number("LGSP_DELIVERY_CONCURRENCY", cls.concurrency))),
            poll=_number("LGSP_DELIVERY_POLL", cls.poll),
            gather=min(_number("LGSP_DELIVERY_GATHER", cls.gather), _number("LGSP_DELIVERY_POLL", cls.poll)),
        )

    @classmethod
    def max_age_from_environment(cls) -> float:
        """The one setting an acceptance needs, read once per process (the environment read per message
        was 1.5 % of a gateway worker's CPU under acceptance load; a process's environment is its own)."""
        return _max_age(cls.max_age)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half the step fixed, half random, so that the
        messages of one outage do not all come back at the same instant."""
        step = min(self.backoff_cap, self.backoff_base * 2 ** max(0, attempt - 1))
        return step / 2 + random.uniform(0, step / 2)
