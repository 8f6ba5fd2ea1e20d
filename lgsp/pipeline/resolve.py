"""Stage: resolve the named service to its current definition."""
from __future__ import annotations

from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.registry import Snapshot


def resolve(ex: Exchange, snap: Snapshot) -> None:
    service = snap.services.get(ex.service_name or "")
    if service is None:
        raise ExchangeError("service.unknown", f"There is no service '{ex.service_name}'; GET /api lists them.")
    if not service.enabled:
        raise ExchangeError("service.unavailable", f"Service '{ex.service_name}' is not offered at the moment.")
    ex.service = service
