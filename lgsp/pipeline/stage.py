"""The stage contract: what every stage of the pipeline is, and what it may rely on.

    async def stage(ex: Exchange, ctx: StageContext) -> None

- One signature for every stage; the pipeline is the tuple `STAGES` in lgsp/pipeline/run.py,
  run in order by `run_stages` (a service with its own pipeline, e.g. lgsp.bulk, has its own tuple there).
- A stage refuses by raising `ExchangeError(code, sentence)` with a code of lgsp/errors.py; anything
  else it raises ends the exchange as `internal.error` (logged). Either way the exchange is audited.
- A stage records its output on the Exchange, and reads what an earlier stage guaranteed through
  the `ex.bound_*` properties (`ex.bound_client`, `ex.bound_service`, `ex.bound_grant`, ...): they
  raise StageOrderError when that stage has not run, so no `assert x is not None` is needed.
  A stage that adds an Exchange field later stages rely on adds its `bound_<name>` property too.
- Configuration comes from `ctx.snap`, the one snapshot the exchange started with; never from
  `ctx.gw.registry.snapshot`, which a reload replaces between awaits. The service's adapter is
  bound at `resolve` (`ex.adapter`): later stages use that one, not the registry's.
- Keep it cheap: a stage that does not wait needs no I/O; run blocking work with asyncio.to_thread.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lgsp.registry import Registry, Snapshot

if TYPE_CHECKING:
    from lgsp.gateway import Gateway
    from lgsp.pipeline.exchange import Exchange


@dataclass(frozen=True, slots=True)
class StageContext:
    """What a stage may use besides the exchange: the process's gateway and the exchange's snapshot."""

    gw: Gateway
    snap: Snapshot

    @property
    def registry(self) -> Registry:
        return self.gw.registry


Stage = Callable[["Exchange", StageContext], Awaitable[None]]
