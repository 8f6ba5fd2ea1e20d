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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lgsp import metrics
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext
from lgsp.traffic.counters import Count, Counter, CounterStore, Quota, Rate, StoreUnavailable, ceil_seconds, store_for
from lgsp.traffic.policies import Policies, Policy

log = logging.getLogger(__name__)
DAY = 86_400


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


class Limiter:
    """The counter store and the calendar of one gateway process."""

    def __init__(self, store: CounterStore, zone: str = "Asia/Ho_Chi_Minh"):
        self.store = store
        self.calendar = Calendar(zone)

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


def limit_field(checks: list[Check], counts: list[Count]) -> str:
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
    checks = limiter.checks(policies, ex.bound_client.client_id, service.name, service.connection, time.time())
    if not checks:
        return
    ex.response_headers["RateLimit-Policy"] = policy_field(checks)
    try:
        counts = await limiter.store.take([c.counter for c in checks])
    except StoreUnavailable:
        closed = [c for c in checks if c.policy.on_store_failure == "closed"]
        if closed:
            raise ExchangeError("rate.store_unavailable", "The rate-limit counters cannot be reached and this "
                                "client's policy refuses calls it cannot count; try again shortly.",
                                headers={"Retry-After": "1"}) from None
        return  # fail open: served uncounted (the store's state shows in /readyz)
    ex.response_headers["RateLimit"] = limit_field(checks, counts)
    for check, count in zip(checks, counts):
        if check.meter is not None:  # how much of a day's or month's quota is gone, for the dashboard and alerts
            metrics.quota_used_ratio.labels(*check.meter).set(1 - count.remaining / _quota(check))
    refused = [(c, n) for c, n in zip(checks, counts) if not n.allowed]
    if refused:
        wait = max(1, max(ceil_seconds(n.retry_after) for _, n in refused))
        raise ExchangeError("rate.limited", f"{refused[0][0].says}; try again in {wait} s.",
                            headers={"Retry-After": str(wait)})
