"""Upstream protection of each connection, as the invoke stage uses it: circuit breaker,
bulkhead and retries around an adapter's call, with their state in /metrics and /readyz.

One guard per connection per worker process (module state), built on the first call and
rebuilt, closed and empty, when the connection changes (its policy, or its settings: a new
endpoint is a new upstream).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from lgsp import metrics
from lgsp.adapter import UpstreamError
from lgsp.errors import ERRORS, ExchangeError
from lgsp.traffic.breaker import CLOSED, STATE_VALUES, CircuitBreaker, CircuitOpen, retry_after_header
from lgsp.traffic.bulkhead import Bulkhead, BulkheadFull
from lgsp.traffic.protection import parse
from lgsp.traffic.retry import RETRYABLE, RetryBudget, backoff

log = logging.getLogger(__name__)
T = TypeVar("T")
# An error that is the gateway's own configuration, not the upstream's health.
_NOT_UPSTREAM = frozenset({"upstream.egress_refused"})


def counts_as_failure(exc: UpstreamError) -> bool:
    """Timeouts, unreachable, faults, 5xx and malformed answers count against the upstream; an answer
    that the caller's request was wrong or the record does not exist (a 4xx code) is a healthy upstream."""
    kind = ERRORS.get(exc.code)
    return exc.code not in _NOT_UPSTREAM and (kind is None or kind.status >= 500)


class Guard:
    def __init__(self, connection: str, policy: Mapping[str, Any] | None):
        self.connection = connection
        self.spec: Any = None
        self.policy = policy
        self.protection = parse(policy)
        self.breaker = CircuitBreaker(self.protection.breaker, on_change=self._state_changed)
        in_use = metrics.upstream_in_use.labels(connection)
        self.bulkhead = Bulkhead(self.protection.max_concurrent, self.protection.queue_timeout, on_change=in_use.inc)
        self.budget = RetryBudget(self.protection.retry.budget)
        metrics.upstream_circuit_state.labels(connection).set(STATE_VALUES[CLOSED])

    def _state_changed(self, state: str) -> None:
        metrics.upstream_circuit_state.labels(self.connection).set(STATE_VALUES[state])
        metrics.upstream_circuit_transitions.labels(self.connection, state).inc()
        level = logging.WARNING if state != CLOSED else logging.INFO
        log.log(level, "circuit %s", state, extra={"fields": {"connection": self.connection, "circuit": state}})

    async def call(self, attempt: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        """The adapter call through the breaker and the bulkhead, retried if it is a read;
        refusals come out as ExchangeErrors, the adapter's own failures unchanged."""
        try:
            probe = self.breaker.admit()
        except CircuitOpen as exc:
            metrics.upstream_rejected.labels(self.connection, "open").inc()
            raise ExchangeError(
                "upstream.unavailable",
                f"The upstream system of this service is failing; the LGSP is not calling it for now "
                f"(circuit open). Try again in {retry_after_header(exc.retry_after)} s.",
                headers={"Retry-After": retry_after_header(exc.retry_after)}, status=503) from None
        try:
            await self.bulkhead.acquire()
        except BaseException as exc:
            self.breaker.release(probe)
            if not isinstance(exc, BulkheadFull):
                raise
            metrics.upstream_rejected.labels(self.connection, "busy").inc()
            raise ExchangeError(
                "upstream.busy",
                f"The upstream system of this service already has {self.bulkhead.limit} calls under way from this "
                f"LGSP worker and none ended within {self.bulkhead.wait:g} s.", headers={"Retry-After": "1"}) from None
        try:
            return await self._attempts(attempt, idempotent, probe)
        finally:
            self.bulkhead.release()

    async def _attempts(self, attempt: Callable[[], Awaitable[T]], idempotent: bool, probe: bool) -> T:
        self.budget.earn()
        retries = 0
        while True:
            try:
                result = await attempt()
            except UpstreamError as exc:
                self.breaker.record(counts_as_failure(exc), probe)
                if not self._may_retry(exc, idempotent, probe, retries):
                    raise
                retries += 1
                metrics.upstream_retries.labels(self.connection).inc()
                await asyncio.sleep(backoff(self.protection.retry, retries))
                if self.breaker.state != CLOSED:  # opened meanwhile: the breaker's answer stands
                    raise
                continue
            except BaseException:  # cancelled, or an adapter bug: no verdict on the upstream
                self.breaker.release(probe)
                raise
            self.breaker.record(False, probe)
            return result

    def _may_retry(self, exc: UpstreamError, idempotent: bool, probe: bool, retries: int) -> bool:
        if not idempotent or exc.code not in RETRYABLE or probe or self.breaker.state != CLOSED:
            return False
        if retries >= self.protection.retry.retries:
            return False
        if not self.budget.spend():
            metrics.upstream_retries_denied.labels(self.connection).inc()
            return False
        return True

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"circuit": self.breaker.state, "in_use": self.bulkhead.in_use,
                               "max_concurrent": self.bulkhead.limit}
        if self.breaker.state != CLOSED:
            out["retry_after"] = round(self.breaker.retry_after(), 1)
        return out


_guards: dict[str, Guard] = {}


def guard_for(connection: str, spec: Any) -> Guard:
    """This worker's guard of the connection (a registry ConnectionSpec, or None), as it is now."""
    guard = _guards.get(connection)
    if guard is not None and guard.spec is spec:
        return guard
    policy = getattr(spec, "protection", None)
    if guard is None or guard.spec != spec or guard.policy != policy:
        guard = _guards[connection] = Guard(connection, policy)
    guard.spec = spec  # a reloaded snapshot's equal spec: compared once, then by identity
    return guard


def status(connections: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Circuit and bulkhead of each enabled connection in this worker (closed and idle until first called)."""
    out = {}
    for name, spec in sorted(connections.items()):
        if not getattr(spec, "enabled", True):
            continue
        guard = _guards.get(name)
        out[name] = guard.status() if guard else {
            "circuit": CLOSED, "in_use": 0, "max_concurrent": parse(getattr(spec, "protection", None)).max_concurrent}
    return out
