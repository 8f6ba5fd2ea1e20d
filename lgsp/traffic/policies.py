"""Traffic policies: what the admin sets, checked before it is stored, read into the snapshot.

Three kinds, named by their target:
  client:<id>                   rate (per second + burst) and quota (per day, per month) of one client
  client:<id>/service:<name>    the same, for one client calling one service
  connection:<name>             a national system's daily quota for the province, shared by every
                                client, with an optional daily share per client (a cap, not a reservation)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

# Above these a value is a typo, not a policy (a national system allots thousands a day, not billions).
MAX_RATE = 100_000.0
MAX_BURST = 1_000_000
MAX_PER_DAY = 1_000_000_000
MAX_PER_MONTH = 30_000_000_000
FAILURE_MODES = ("open", "closed")
FIELDS = ("rate_per_second", "burst", "per_day", "per_month", "shares", "on_store_failure")


class PolicyError(ValueError):
    """A policy that cannot be stored, with a sentence saying why."""

    def __init__(self, detail: str, code: str = "admin.invalid"):
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Policy:
    target: str
    client_id: str | None = None
    service: str | None = None
    connection: str | None = None
    rate_per_second: float | None = None
    burst: int | None = None
    per_day: int | None = None
    per_month: int | None = None
    shares: Mapping[str, int] = field(default_factory=dict)
    on_store_failure: str = "open"

    @property
    def kind(self) -> str:
        return "connection" if self.connection else "service" if self.service else "client"


def target_of(client_id: str | None = None, service: str | None = None, connection: str | None = None) -> str:
    if connection and not client_id and not service:
        return f"connection:{connection}"
    if client_id and not connection:
        return f"client:{client_id}" + (f"/service:{service}" if service else "")
    raise PolicyError("A policy is for a client, a client and a service, or a connection.")


def parse_target(target: str) -> dict[str, str | None]:
    """client:<id>[/service:<name>] or connection:<name> → its parts."""
    head, _, rest = target.partition("/")
    kind, _, name = head.partition(":")
    parts: dict[str, str | None] = {"client_id": None, "service": None, "connection": None}
    if kind == "connection" and name and not rest:
        parts["connection"] = name
    elif kind == "client" and name:
        parts["client_id"] = name
        if rest:
            skind, _, sname = rest.partition(":")
            if skind != "service" or not sname:
                raise PolicyError(f"'{target}' is not a policy target (client:<id>/service:<name>).")
            parts["service"] = sname
    else:
        raise PolicyError(f"'{target}' is not a policy target: client:<id>, client:<id>/service:<name> "
                          "or connection:<name>.")
    return parts


def _number(values: Mapping[str, Any], name: str, low: float, high: float, *, whole: bool) -> float | int | None:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{name} must be a number, not {value!r}.")
    if whole and value != int(value):
        raise PolicyError(f"{name} must be a whole number, not {value!r}.")
    if value < low:
        raise PolicyError(f"{name} must be at least {low:g}; {value!r} would refuse every call or mean nothing. "
                          "Remove the limit instead.")
    if value > high:
        raise PolicyError(f"{name} of {value!r} is absurd (the most accepted is {high:,.0f}).")
    return int(value) if whole else float(value)


def checked(target: str, values: Mapping[str, Any]) -> Policy:
    """The policy for `target` from `values`, or PolicyError saying what is wrong (nothing stored)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise PolicyError(f"Unknown policy field(s) {', '.join(sorted(unknown))}; fields are {', '.join(FIELDS)}.")
    parts = parse_target(target)
    rate = _number(values, "rate_per_second", 0.001, MAX_RATE, whole=False)
    burst = _number(values, "burst", 1, MAX_BURST, whole=True)
    per_day = _number(values, "per_day", 1, MAX_PER_DAY, whole=True)
    per_month = _number(values, "per_month", 1, MAX_PER_MONTH, whole=True)
    mode = values.get("on_store_failure") or "open"
    if mode not in FAILURE_MODES:
        raise PolicyError("on_store_failure is open (serve uncounted) or closed (refuse) when the counter "
                          "store cannot be reached.")
    if burst is not None and rate is None:
        raise PolicyError("A burst needs a rate (rate_per_second).")
    if rate is not None and burst is None:
        burst = max(1, math.ceil(rate))  # one second's worth
    shares = _shares(values.get("shares"), per_day, parts["connection"] is not None)
    if parts["connection"]:
        if rate is not None:
            raise PolicyError("A connection's policy is a daily quota (per_day), with optional shares; "
                              "rates are set per client.")
        if per_day is None:
            raise PolicyError("A connection's policy needs its daily quota (per_day).")
    elif rate is None and per_day is None and per_month is None:
        raise PolicyError("A policy needs a rate (rate_per_second) or a quota (per_day, per_month).")
    if per_day is not None and per_month is not None and per_month < per_day:
        raise PolicyError(f"per_month ({per_month}) is below per_day ({per_day}).")
    return Policy(target, parts["client_id"], parts["service"], parts["connection"], rate, burst, per_day,
                  per_month, shares, mode)


def _shares(value: Any, per_day: int | None, connection: bool) -> dict[str, int]:
    if value in (None, {}):
        return {}
    if not connection:
        raise PolicyError("Shares belong to a connection's daily quota.")
    if not isinstance(value, Mapping):
        raise PolicyError("shares is a map of client id → daily share.")
    out = {}
    for client_id, share in value.items():
        n = _number({"share": share}, "share", 1, MAX_PER_DAY, whole=True)
        if per_day is not None and n > per_day:
            raise PolicyError(f"The share of '{client_id}' ({n}) is above the connection's daily quota ({per_day}).")
        out[str(client_id)] = n
    return out


def as_row(policy: Policy) -> dict[str, Any]:
    return {"target": policy.target, "client_id": policy.client_id, "service": policy.service,
            "connection": policy.connection, "rate_per_second": policy.rate_per_second, "burst": policy.burst,
            "per_day": policy.per_day, "per_month": policy.per_month, "shares": dict(policy.shares),
            "on_store_failure": policy.on_store_failure}


def from_row(row: Mapping[str, Any]) -> Policy:
    return Policy(row["target"], row["client_id"], row["service"], row["connection"], row["rate_per_second"],
                  row["burst"], row["per_day"], row["per_month"], dict(row["shares"] or {}),
                  row["on_store_failure"])


@dataclass(frozen=True)
class Policies:
    """The policies of a snapshot, indexed the way the `limit` stage looks them up."""
    by_client: Mapping[str, Policy] = field(default_factory=dict)
    by_client_service: Mapping[tuple[str, str], Policy] = field(default_factory=dict)
    by_connection: Mapping[str, Policy] = field(default_factory=dict)

    @classmethod
    def of(cls, policies: list[Policy]) -> "Policies":
        return cls({p.client_id: p for p in policies if p.kind == "client"},
                   {(p.client_id, p.service): p for p in policies if p.kind == "service"},
                   {p.connection: p for p in policies if p.kind == "connection"})

    def __bool__(self) -> bool:
        return bool(self.by_client or self.by_client_service or self.by_connection)
