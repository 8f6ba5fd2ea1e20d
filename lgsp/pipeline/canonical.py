"""Stage: map the backend's answer into the province's canonical model,
with the adapter's declarative mapping file (see lgsp.mapping.compile)."""
from __future__ import annotations

from lgsp.errors import ExchangeError
from lgsp.mapping.compile import MappingError, load_mapping
from lgsp.pipeline.exchange import Exchange
from lgsp.registry import Registry


def to_canonical(ex: Exchange, registry: Registry) -> None:
    adapter = registry.adapter(ex.service.connection)
    if adapter.mapping_file is None:  # the adapter already speaks the canonical model
        ex.canonical = ex.result.data
        return
    mapping = load_mapping(adapter.mapping_file)
    try:
        ex.canonical = mapping.apply(ex.service.operation, ex.result.data, meta=ex.result.meta)
    except MappingError as exc:
        raise ExchangeError("upstream.malformed", f"The upstream answer could not be mapped: {exc}") from None
