"""A connection's upstream protection policy: bulkhead, retry and circuit breaker settings.

Stored beside the adapter's settings (the `protection` of a connection), set through the
admin API and `lgsp apply`; every value has a default, so a connection without a policy is
protected too. The JSON Schema below is the one the admin API spec declares (a test keeps
them equal) and gives the clear sentence a bad value is refused with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import jsonschema


def _number(minimum: float, maximum: float, default: float, text: str) -> dict:
    return {"type": "number", "minimum": minimum, "maximum": maximum, "default": default, "description": text}


def _integer(minimum: int, maximum: int, default: int, text: str) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default, "description": text}


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Upstream protection of the connection, per gateway worker process; every value has a default.",
    "properties": {
        "max_concurrent": _integer(1, 10000, 50, "Bulkhead: calls under way at once to this upstream."),
        "queue_timeout": _number(0, 60, 1.0, "Seconds a call over the bulkhead waits for a slot before upstream.busy."),
        "retry": {
            "type": "object",
            "additionalProperties": False,
            "description": "Retries of reads (operations that change nothing) after a connection failure.",
            "properties": {
                "retries": _integer(0, 5, 1, "Retries after the first attempt (0: never retry)."),
                "backoff": _number(0, 10, 0.05, "Seconds before the first retry (doubled each time, jittered)."),
                "max_backoff": _number(0, 60, 1.0, "Longest wait before a retry, in seconds."),
                "budget": _number(0, 1, 0.1, "Retries as a share of calls, at most (0.1: 10 %)."),
            },
        },
        "breaker": {
            "type": "object",
            "additionalProperties": False,
            "description": "Circuit breaker: stop calling a failing upstream, probe it now and then.",
            "properties": {
                "failures": _integer(1, 1000, 5, "Consecutive failures that open the circuit."),
                "failure_ratio": _number(0.01, 1, 0.5, "Share of failed calls in the window that opens the circuit."),
                "window": _number(1, 3600, 30, "Seconds the failure ratio is measured over."),
                "min_calls": _integer(1, 100000, 20, "Calls in the window before the ratio counts."),
                "open_seconds": _number(0.1, 3600, 10, "Seconds the circuit stays open before a probe call."),
                "probes": _integer(1, 100, 1, "Probe calls at once while half-open."),
            },
        },
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


class InvalidProtection(ValueError):
    """A protection policy that cannot be used, with a sentence saying why."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    backoff: float
    max_backoff: float
    budget: float


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int
    failure_ratio: float
    window: float
    min_calls: int
    open_seconds: float
    probes: int


@dataclass(frozen=True)
class Protection:
    max_concurrent: int
    queue_timeout: float
    retry: RetryPolicy
    breaker: BreakerPolicy


def check(policy: Any) -> dict[str, Any] | None:
    """The policy as it will be stored (None: the defaults), or InvalidProtection saying what is wrong."""
    if policy is None:
        return None
    errors = sorted(_VALIDATOR.iter_errors(policy), key=lambda e: list(map(str, e.path)))
    if errors:
        raise InvalidProtection("; ".join(
            f"protection/{'/'.join(map(str, e.path))}: {e.message}" if e.path else f"protection: {e.message}"
            for e in errors))
    effective = parse(policy)
    if effective.retry.max_backoff < effective.retry.backoff:
        raise InvalidProtection("protection/retry: max_backoff must not be less than backoff.")
    return dict(policy)


def _defaults(schema: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    return {name: given.get(name, prop["default"]) for name, prop in schema["properties"].items()
            if "default" in prop}


def parse(policy: Mapping[str, Any] | None) -> Protection:
    """The effective policy: what the connection says, the defaults for the rest."""
    policy = policy or {}
    props = SCHEMA["properties"]
    top = _defaults(SCHEMA, policy)
    retry = _defaults(props["retry"], policy.get("retry") or {})
    breaker = _defaults(props["breaker"], policy.get("breaker") or {})
    return Protection(
        max_concurrent=int(top["max_concurrent"]), queue_timeout=float(top["queue_timeout"]),
        retry=RetryPolicy(int(retry["retries"]), float(retry["backoff"]), float(retry["max_backoff"]),
                          float(retry["budget"])),
        breaker=BreakerPolicy(int(breaker["failures"]), float(breaker["failure_ratio"]), float(breaker["window"]),
                              int(breaker["min_calls"]), float(breaker["open_seconds"]), int(breaker["probes"])),
    )


DEFAULT = parse(None)
