"""Stage: map the backend's answer into the province's canonical model,
with the adapter's declarative mapping file (see lgsp.mapping.compile)."""
from __future__ import annotations

from lgsp.errors import ExchangeError
from lgsp.mapping.compile import MappingError, load_mapping
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext


async def to_canonical(ex: Exchange, ctx: StageContext) -> None:
    adapter, result = ex.bound_adapter, ex.bound_result  # the adapter invoke called, whatever a reload did since
    if adapter.mapping_file is None:  # the adapter already speaks the canonical model
        ex.canonical = result.data
        return
    mapping = load_mapping(adapter.mapping_file)
    try:
        ex.canonical = mapping.apply(ex.bound_service.operation, result.data, meta=result.meta)
    except MappingError as exc:
        raise ExchangeError("upstream.malformed", f"The upstream answer could not be mapped: {exc}") from None
