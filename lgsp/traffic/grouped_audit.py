"""The audit records of a flood's refusals, committed in groups rather than one transaction each.

A client far over its rate (or without valid credentials) makes hundreds of refusals a second,
and each must still be recorded before its answer leaves. Committed one by one, every refusal
costs the audit writer a whole transaction (its per-group work is most of a record's cost) and
holds the database's write lock that the other clients' records wait for. Here a refusal's
record waits up to LINGER seconds in its event loop for others, and they go to the writer as
one group (`commit_all`: consecutive in the chain, one transaction). Each refusal is still
answered only once its record is durable; the refused client waits up to LINGER more, the
clients within their limits not at all (their records never wait here).
"""
from __future__ import annotations

import asyncio
import weakref

from lgsp.audit.writer import AuditRecord, AuditUnavailable, AuditWriter
from lgsp.errors import ExchangeError

LINGER = 0.05      # s a refusal's record waits for others: ~5 records a group at 90 refusals/s a worker
GROUP_MAX = 64     # records a group holds before it is committed without waiting more

_groups: weakref.WeakKeyDictionary[AuditWriter, RefusalGroup] = weakref.WeakKeyDictionary()


def groupable(error: ExchangeError | None) -> bool:
    """The refusals a flood is made of: over a rate or quota (429), or without valid credentials (401)."""
    return error is not None and error.status in (401, 429)


async def commit_refusal(writer: AuditWriter, record: AuditRecord) -> None:
    """Return once `record` is durable, committed with the other refusals of the next LINGER seconds;
    raise AuditUnavailable (from the writer) if it cannot be."""
    loop = asyncio.get_running_loop()
    group = _groups.get(writer)
    if group is None or group.loop is not loop:
        group = _groups[writer] = RefusalGroup(writer, loop)
    await group.add(record)


class RefusalGroup:
    """The refusals' records of one event loop waiting to be committed together."""

    def __init__(self, writer: AuditWriter, loop: asyncio.AbstractEventLoop):
        self.writer, self.loop = writer, loop
        self.waiting: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self.timer: asyncio.TimerHandle | None = None

    def add(self, record: AuditRecord) -> asyncio.Future[None]:
        done = self.loop.create_future()
        self.waiting.append((record, done))
        if len(self.waiting) >= GROUP_MAX:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(LINGER, self.flush)
        return done

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiting, self.waiting = self.waiting, []
        committed = asyncio.ensure_future(self.writer.commit_all([record for record, _ in waiting]))
        committed.add_done_callback(lambda task: _settle(task, [done for _, done in waiting]))


def _settle(task: asyncio.Future[None], waiting: list[asyncio.Future[None]]) -> None:
    error = AuditUnavailable("group commit cancelled") if task.cancelled() else task.exception()
    for done in waiting:
        if done.done():  # its exchange was cancelled meanwhile (the client went away); the record is written
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
