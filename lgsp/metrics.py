"""Prometheus metrics. Labels never carry personal data (no IDs, no paths)."""
from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

exchanges = Counter(
    "lgsp_exchanges_total", "Exchanges through the LGSP", ["service", "client", "outcome", "code"]
)
exchange_seconds = Histogram(
    "lgsp_exchange_duration_seconds", "Time from request to answer, audit included", ["service"], buckets=_BUCKETS
)
upstream_seconds = Histogram(
    "lgsp_upstream_duration_seconds", "Time spent in the backend call", ["connection", "operation", "outcome"],
    buckets=_BUCKETS,
)
# Per client, fewer buckets: clients × services × fine buckets would be too many series.
client_exchange_seconds = Histogram(
    "lgsp_client_exchange_duration_seconds", "Time from request to answer, per calling client", ["client"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
audit_batch_records = Histogram(
    "lgsp_audit_batch_records", "Audit records committed per transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
# What every exchange waits for before its answer leaves: its group's durable commit, the wait for the SQLite
# write lock (held by another worker's commit) included. A slow disk shows here first.
audit_commit_seconds = Histogram(
    "lgsp_audit_commit_seconds", "Time for a group of audit records to become durable (write lock wait included)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# Upstream protection (lgsp.traffic), per connection: a connection's name is the integrator's, never personal.
# Breaker and bulkhead live in each worker process: with several workers the state gauge has one series
# per worker (pid label), the in-use gauge is their sum.
upstream_circuit_state = Gauge(
    "lgsp_upstream_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", ["connection"],
    multiprocess_mode="liveall",
)
upstream_circuit_transitions = Counter(
    "lgsp_upstream_circuit_transitions_total", "Circuit breaker state changes, by the state entered",
    ["connection", "state"],
)
upstream_in_use = Gauge(
    "lgsp_upstream_in_use", "Calls under way to the upstream (bulkhead slots in use)", ["connection"],
    multiprocess_mode="livesum",
)
upstream_rejected = Counter(
    "lgsp_upstream_rejected_total", "Calls not made: circuit open (open) or bulkhead full (busy)",
    ["connection", "reason"],
)
upstream_retries = Counter("lgsp_upstream_retries_total", "Retries of reads made", ["connection"])
upstream_retries_denied = Counter(
    "lgsp_upstream_retries_denied_total", "Retries the retry budget refused", ["connection"],
)
# Quotas (lgsp.traffic): the share of a day's or month's quota used, per policy target (client and
# service names, never personal). The counters are shared by all workers, so the most recent is the highest.
quota_used_ratio = Gauge(
    "lgsp_quota_used_ratio", "Share of a day's or month's quota used so far (0-1)", ["target", "window"],
    multiprocess_mode="livemax",
)
# Store-and-forward delivery (lgsp.delivery): labelled by destination (a connection name), never by message.
delivery_attempts = Counter(
    "lgsp_delivery_attempts_total", "Delivery attempts by destination and outcome (delivered, retry, dead)",
    ["destination", "outcome"],
)
delivery_outcomes = Counter(
    "lgsp_delivery_outcomes_total", "Messages that reached a final outcome (delivered, dead)", ["destination", "outcome"],
)
delivery_queue_depth = Gauge(
    "lgsp_delivery_queue_depth", "Messages not yet delivered, by destination and state", ["destination", "state"],
    multiprocess_mode="livemax",
)
delivery_oldest_age = Gauge(
    "lgsp_delivery_oldest_message_age_seconds", "Age of the oldest message not yet delivered", ["destination"],
    multiprocess_mode="livemax",
)


_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """metric.labels(*labels), found once: labels() takes a lock and rebuilds its key on every call.

    As many entries as the metric has series (their label values are bounded already: no personal data)."""
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def render() -> tuple[bytes, str]:
    """The exposition text; merges all worker processes when running several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
