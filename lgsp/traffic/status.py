"""Circuit and bulkhead state of each connection as a running gateway reports it in /metrics,
for `lgsp connections list`.

The state lives in each worker process (as in Envoy and Kong), and a gateway's /metrics merges
all its workers (prometheus_client's multiprocess collector): so one read of /metrics is true for
the whole multi-worker gateway on that machine. Each node of a multi-node deployment answers for
itself; Prometheus, scraping every node, has the whole picture.
"""
from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lgsp.traffic.breaker import STATE_VALUES

_NAMES = {v: k for k, v in STATE_VALUES.items()}


def fetch(base_url: str, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """Per connection: `circuit` (closed, or open/half-open with how many workers say so) and `in_use`.
    Raises httpx.HTTPError when the gateway does not answer."""
    response = httpx.get(f"{base_url.rstrip('/')}/metrics", timeout=timeout)
    response.raise_for_status()
    return summarise(response.text)


def summarise(text: str) -> dict[str, dict[str, Any]]:
    states: dict[str, list[str]] = {}
    in_use: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            connection = sample.labels.get("connection")
            if connection is None:
                continue
            if sample.name == "lgsp_upstream_circuit_state":
                states.setdefault(connection, []).append(_NAMES.get(int(sample.value), "unknown"))
            elif sample.name == "lgsp_upstream_in_use":
                in_use[connection] = in_use.get(connection, 0) + sample.value
    out = {}
    for connection in sorted(set(states) | set(in_use)):
        out[connection] = {"circuit": _circuit(states.get(connection, [])), "in_use": int(in_use.get(connection, 0))}
    return out


def _circuit(per_worker: list[str]) -> str:
    for state in ("open", "half-open"):
        count = per_worker.count(state)
        if count:
            return state if len(per_worker) == 1 else f"{state} ({count}/{len(per_worker)} workers)"
    return "closed"
