"""Stage: limit — the client's rates and quotas, after authorize and before validate/invoke.

Every policy that applies to the exchange (the client's, the client × service one, the
connection's national daily quota and the client's share of it) becomes a counter; the
counter store takes them all at once or none. Over any of them: 429 `rate.limited` with
Retry-After, before the backend is called. Every answer of a limited exchange carries the
IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-11):

    RateLimit-Policy: "client-rate";q=10;w=2, "client-day";q=5000;w=86400
    RateLimit: "client-rate";r=9;t=1, "client-day";r=4999;t=38210
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import Counter as Total

from lgsp import metrics
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext
from lgsp.traffic.counters import (
    Count,
    Counter,
    CounterStore,
    Quota,
    Rate,
    StoreUnavailable,
    ceil_seconds,
    expiry,
    step,
    store_for,
    unconsumed,
)
from lgsp.traffic.policies import Policies, Policy

log = logging.getLogger(__name__)
DAY = 86_400
local_refusals = Total("lgsp_rate_local_refusals_total",
                       "Refusals a worker answered from a refusal the counter store gave it, without asking again")


@dataclass(frozen=True)
class Check:
    name: str         # the policy item's name in the RateLimit fields
    policy: Policy
    counter: Counter
    window: int | None
    says: str         # what the limit is, in a sentence of a refusal
    meter: tuple[str, str] | None = None  # a quota's (target, window) labels of lgsp_quota_used_ratio


class Calendar:
    """The province's days and months (quotas start again at local midnight), cached per day."""

    def __init__(self, zone: str):
        try:
            self.tz: dt.tzinfo = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("time zone %r not known; quota days are counted in UTC", zone)
            self.tz = dt.timezone.utc
        self._day: tuple[float, str, float] = (0.0, "", 0.0)
        self._month: tuple[float, str, float] = (0.0, "", 0.0)

    def day(self, now: float) -> tuple[str, float]:
        if not (self._day[0] <= now < self._day[2]):
            today = dt.datetime.fromtimestamp(now, self.tz).date()
            start = dt.datetime.combine(today, dt.time(), self.tz).timestamp()
            end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), self.tz).timestamp()
            self._day = (start, today.strftime("%Y%m%d"), end)
        return self._day[1], self._day[2]

    def month(self, now: float) -> tuple[str, float]:
        if not (self._month[0] <= now < self._month[2]):
            today = dt.datetime.fromtimestamp(now, self.tz).date()
            first = today.replace(day=1)
            following = (first + dt.timedelta(days=32)).replace(day=1)
            self._month = (dt.datetime.combine(first, dt.time(), self.tz).timestamp(), first.strftime("%Y%m"),
                           dt.datetime.combine(following, dt.time(), self.tz).timestamp())
        return self._month[1], self._month[2]


class Refusals:
    """What this process learned from the store's refusals, so that it refuses again without asking.

    When the store refuses an exchange, each refused counter says how long it stays exhausted
    (retry_after). A counter cannot be freed sooner by anyone (no call is counted while it refuses,
    and another worker or node can only push it further), so until the first of those times every
    exchange of the same counters would be refused too: this process refuses it from what it
    learned, at no cost to the store. The counters are the key, with their limits, so a
    changed policy is asked about afresh. Only refusals are remembered; an admitted call always asks.
    """

    MAX = 4096   # remembered counter sets before the ended ones are dropped

    def __init__(self) -> None:
        self._known: dict[tuple[Counter, ...], tuple[float, float, list[Count]]] = {}  # answered at, until, counts

    def learn(self, counters: tuple[Counter, ...], counts: list[Count], asked_at: float, answered_at: float) -> None:
        """Remember a refusal: refused here until `asked_at` + the shortest wait (no later than the store's own
        end), and its times shown as running down from `answered_at` (so Retry-After never comes too soon)."""
        waits = [n.retry_after for n in counts if not n.allowed]
        if not waits or min(waits) <= 0:
            return
        if len(self._known) >= self.MAX:  # forgetting costs only a round trip to the store
            self._known = {k: v for k, v in self._known.items() if v[1] > asked_at}
            if len(self._known) >= self.MAX:
                self._known.clear()
        self._known[counters] = (answered_at, asked_at + min(waits), counts)

    def counts(self, counters: tuple[Counter, ...], now: float) -> list[Count] | None:
        """The store's answer as it stands now, if these counters are certainly still exhausted; else None."""
        known = self._known.get(counters)
        if known is None:
            return None
        answered_at, until, counts = known
        if now >= until:
            del self._known[counters]
            return None
        gone = now - answered_at  # the refused counters' times run down; the others show their last count
        return [Count(n.allowed, n.remaining, max(0.0, n.reset - gone), 0.0 if n.allowed else n.retry_after - gone)
                for n in counts]


@dataclass(frozen=True)
class Plan:
    """The checks of one client × service under one set of policies, with their RateLimit-Policy field."""
    checks: tuple[Check, ...]
    counters: tuple[Counter, ...]
    policy: str        # the RateLimit-Policy field
    until: float       # when a day's or month's counter key changes (local midnight): made afresh then


class OwnCounts:
    """Counters of this process alone, for calls a fail-open policy serves while the shared store is unreachable:
    each worker still holds the client to its policy on its own, so a flood is never served unlimited (with
    N workers a client gets at most N times its limit, and nothing is counted in the shared store)."""

    MAX = 4096   # counters kept before the ended ones are dropped

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, float]] = {}   # key → (value, expires)

    def take(self, counters: Sequence[Counter], now: float) -> list[Count]:
        results = []
        for counter in counters:
            known = self._values.get(counter.key)
            results.append(step(counter, known[0] if known and known[1] > now else None, now))
        counts = [count for count, _ in results]
        if not all(count.allowed for count in counts):
            return unconsumed(counts)
        if len(self._values) >= self.MAX:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        for counter, (_, value) in zip(counters, results, strict=True):
            if value is not None:
                self._values[counter.key] = (value, expiry(counter, value, now))
        return counts


class Limiter:
    """The counter store, the calendar and the learned refusals of one gateway process."""

    PLANS = 4096   # remembered client × service plans before they are all made afresh

    def __init__(self, store: CounterStore, zone: str = "Asia/Ho_Chi_Minh"):
        self.store = store
        self.calendar = Calendar(zone)
        self.refusals = Refusals()
        self.own = OwnCounts()   # fail-open calls while the store is unreachable
        self._plans: dict[tuple[str, str, str | None], Plan] = {}
        self._plans_of: Policies | None = None   # the policies the plans were made from

    def plan(self, policies: Policies, client_id: str, service: str, connection: str | None, now: float) -> Plan:
        """The checks of an exchange, made once per client × service and policy set (and day), not per call:
        a flood of refused calls then costs no Check objects, counter keys or header text."""
        if policies is not self._plans_of:  # a new configuration snapshot: its policies may have changed
            self._plans, self._plans_of = {}, policies
        key = (client_id, service, connection)
        plan = self._plans.get(key)
        if plan is None or now >= plan.until:
            checks = tuple(self.checks(policies, client_id, service, connection, now))
            until = min(self.calendar.day(now)[1], self.calendar.month(now)[1])
            plan = Plan(checks, tuple(c.counter for c in checks), policy_field(list(checks)), until)
            if len(self._plans) >= self.PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    async def take(self, counters: tuple[Counter, ...]) -> list[Count]:
        """The store's count of one exchange, or this process's certain refusal without asking it."""
        now = time.monotonic()
        counts = self.refusals.counts(counters, now)
        if counts is not None:
            local_refusals.inc()
            return counts
        counts = await self.store.take(counters)
        self.refusals.learn(counters, counts, now, time.monotonic())
        return counts

    @classmethod
    def from_settings(cls, redis_url: str | None, home: Path, zone: str) -> "Limiter":
        return cls(store_for(redis_url, home), zone)

    async def state(self) -> dict:
        return await self.store.state()

    async def close(self) -> None:
        await self.store.close()

    def checks(self, policies: Policies, client_id: str, service: str, connection: str | None,
               now: float) -> list[Check]:
        out: list[Check] = []
        own = policies.by_client.get(client_id)
        if own:
            out += self._own(own, f"c:{client_id}", "client", f"Client '{client_id}'", "", now)
        per_service = policies.by_client_service.get((client_id, service))
        if per_service:
            out += self._own(per_service, f"cs:{client_id}:{service}", "service", f"Client '{client_id}'",
                             f" for service '{service}'", now)
        national = policies.by_connection.get(connection) if connection else None
        if national:
            day, ends = self.calendar.day(now)
            out.append(Check("national-day", national, Quota(f"n:{connection}:d:{day}", national.per_day, ends), DAY,
                             f"The province's daily quota of {national.per_day} calls to '{connection}' is used up",
                             (national.target, "day")))
            share = national.shares.get(client_id)
            if share:
                out.append(Check("national-share-day", national, Quota(f"ns:{connection}:{client_id}:d:{day}", share,
                                                                       ends), DAY,
                                 f"Client '{client_id}' has used its daily share of {share} calls to '{connection}'",
                                 (f"{national.target}/client:{client_id}", "day")))
        return out

    def _own(self, policy: Policy, key: str, label: str, who: str, scope: str, now: float) -> list[Check]:
        out = []
        if policy.rate_per_second:
            interval = 1.0 / policy.rate_per_second
            out.append(Check(f"{label}-rate", policy, Rate(f"{key}:r", interval, policy.burst),
                             max(1, math.ceil(policy.burst * interval)),
                             f"{who} is over its rate of {policy.rate_per_second:g} calls per second "
                             f"(burst {policy.burst}){scope}"))
        if policy.per_day:
            day, ends = self.calendar.day(now)
            out.append(Check(f"{label}-day", policy, Quota(f"{key}:d:{day}", policy.per_day, ends), DAY,
                             f"{who} has used its quota of {policy.per_day} calls per day{scope}",
                             (policy.target, "day")))
        if policy.per_month:
            month, ends = self.calendar.month(now)
            out.append(Check(f"{label}-month", policy, Quota(f"{key}:m:{month}", policy.per_month, ends), None,
                             f"{who} has used its quota of {policy.per_month} calls per month{scope}",
                             (policy.target, "month")))
        return out


def policy_field(checks: list[Check]) -> str:
    return ", ".join(f'"{c.name}";q={_quota(c)}' + (f";w={c.window}" if c.window else "") for c in checks)


def _quota(check: Check) -> int:
    counter = check.counter
    return counter.burst if isinstance(counter, Rate) else counter.limit


def limit_field(checks: Sequence[Check], counts: list[Count]) -> str:
    items = []
    for check, count in zip(checks, counts):
        wait = count.reset if count.allowed else count.retry_after
        items.append(f'"{check.name}";r={count.remaining};t={ceil_seconds(wait)}')
    return ", ".join(items)


async def limit(ex: Exchange, ctx: StageContext) -> None:
    """Count the exchange against every policy that applies; refuse it when one is exhausted."""
    policies: Policies = ctx.snap.policies
    if not policies:
        return
    limiter = ctx.gw.limiter
    service = ex.bound_service
    plan = limiter.plan(policies, ex.bound_client.client_id, service.name, service.connection, time.time())
    checks = plan.checks
    if not checks:
        return
    ex.response_headers["RateLimit-Policy"] = plan.policy
    try:
        counts = await limiter.take(plan.counters)
    except StoreUnavailable:
        closed = [c for c in checks if c.policy.on_store_failure == "closed"]
        if closed:
            raise ExchangeError("rate.store_unavailable", "The rate-limit counters cannot be reached and this "
                                "client's policy refuses calls it cannot count; try again shortly.",
                                headers={"Retry-After": "1"}) from None
        # Fail open: served, not counted in the store (its state shows in /readyz), but never beyond the policy
        # in this worker; no RateLimit field, as the shared count is not known.
        refuse(checks, limiter.own.take(plan.counters, time.time()))
        return
    ex.response_headers["RateLimit"] = limit_field(checks, counts)
    for check, count in zip(checks, counts):
        if check.meter is not None:  # how much of a day's or month's quota is gone, for the dashboard and alerts
            metrics.quota_used_ratio.labels(*check.meter).set(1 - count.remaining / _quota(check))
    refuse(checks, counts)


def refuse(checks: Sequence[Check], counts: list[Count]) -> None:
    """429 `rate.limited` if one of the counts is exhausted, with the longest wait of them."""
    refused = [(c, n) for c, n in zip(checks, counts) if not n.allowed]
    if refused:
        wait = max(1, max(ceil_seconds(n.retry_after) for _, n in refused))
        raise ExchangeError("rate.limited", f"{refused[0][0].says}; try again in {wait} s.",
                            headers={"Retry-After": str(wait)})
