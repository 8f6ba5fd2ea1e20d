"""The per-process gateway: database engine, configuration registry, audit writer."""
from __future__ import annotations

import asyncio
import gc

from lgsp.audit.writer import AuditWriter, writer_for
from lgsp.config import Settings, settings
from lgsp.registry import Registry
from lgsp.storage import engine_for
from lgsp.traffic.limit import Limiter


class Gateway:
    def __init__(self, cfg: Settings | None = None):
        self.settings = cfg or settings()
        self.engine = engine_for(self.settings.db_url)
        self.registry = Registry(self.engine, self.settings.config_poll_seconds)
        self.limiter = Limiter.from_settings(self.settings.redis_url, self.settings.home, self.settings.quota_timezone)
        self.audit: AuditWriter | None = None
        self.ready = False

    async def start(self) -> None:
        self.audit = writer_for(self.engine)  # shared with admin actions: one chain per process
        await self.registry.start()
        await asyncio.to_thread(self.registry.build_adapters)  # a population adapter's child process: ~1 s
        self.registry.compile_mappings()
        # Everything built so far (specs, WSDLs, mappings) lives as long as the
        # process: keep it out of the collector's way, and collect young objects
        # less often, which trims the latency tail under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.registry.stop()
        await self.limiter.close()
        if self.audit:
            self.audit.close()
