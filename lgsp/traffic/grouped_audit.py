"""The audit records of a flood's refusals, committed with other records rather than one transaction each.

A client far over its rate (or without valid credentials) makes hundreds of refusals a second,
and each must still be recorded before its answer leaves. Committed one by one, every refusal
costs the audit writer a whole transaction (its per-group work is most of a record's cost) and
holds the database's write lock that the other clients' records wait for. Here a refusal's
record waits in its event loop for the next admitted exchange of that loop, and rides in that
exchange's transaction (`commit_with_refusals`: the writer takes both entries into one group, see
`AuditWriter.queue_all`); with no admitted exchange within LINGER seconds, or GROUP_MAX refusals
waiting, they are committed as a group of their own. Each refusal is still answered only once its
record is durable: a crash loses no answered refusal. The refused client waits up to LINGER more
for its answer; an admitted exchange never waits for refusals (they join the commit it makes anyway).
"""
from __future__ import annotations

import asyncio
import weakref
from typing import Sequence

from lgsp.audit.writer import AuditRecord, AuditUnavailable, AuditWriter, Stored
from lgsp.errors import ExchangeError

LINGER = 0.2       # s at most a refusal's record waits; the next admitted exchange usually takes it much sooner
GROUP_MAX = 64     # records a group holds before it is committed without waiting more

_groups: weakref.WeakKeyDictionary[AuditWriter, RefusalGroup] = weakref.WeakKeyDictionary()


def groupable(error: ExchangeError | None) -> bool:
    """The refusals a flood is made of: over a rate or quota (429), or without valid credentials (401)."""
    return error is not None and error.status in (401, 429)


async def commit_refusal(writer: AuditWriter, record: AuditRecord) -> None:
    """Return once `record` is durable, committed with the next admitted exchange's records or with the
    other refusals of the next LINGER seconds; raise AuditUnavailable (from the writer) if it cannot be."""
    loop = asyncio.get_running_loop()
    group = _groups.get(writer)
    if group is None or group.loop is not loop:
        group = _groups[writer] = RefusalGroup(writer, loop)
    await group.add(record)


async def commit_with_refusals(writer: AuditWriter, records: list[AuditRecord], stored: Sequence[Stored] = ()) -> None:
    """Commit an exchange's `records` (and `stored`), taking along in the same transaction the refusals
    waiting in this event loop; raise as `AuditWriter.commit_all` does, for these records only."""
    group = _groups.get(writer)
    if group is not None and group.loop is asyncio.get_running_loop() and group.waiting:
        await group.commit_with((records if len(records) > 1 else records[0], stored))
    elif len(records) > 1:
        await writer.commit_all(records, stored)
    else:
        await writer.commit(records[0], stored)


class RefusalGroup:
    """The refusals' records of one event loop waiting to be committed."""

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
        """The waiting refusals, committed now as a group of their own."""
        self._queue([])

    def commit_with(self, entry: tuple[AuditRecord | list[AuditRecord], Sequence[Stored]]) -> asyncio.Future[None]:
        """The waiting refusals and another exchange's `entry`, queued to the writer at once (one transaction);
        the future of `entry` alone."""
        return self._queue([entry])[0]

    def _queue(self, entries: list[tuple[AuditRecord | list[AuditRecord], Sequence[Stored]]]
               ) -> list[asyncio.Future[None]]:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiting, self.waiting = self.waiting, []
        if not waiting:
            return self.writer.queue_all(entries) if entries else []
        refusals: tuple[list[AuditRecord], Sequence[Stored]] = ([record for record, _ in waiting], ())
        committed, *others = self.writer.queue_all([refusals, *entries])
        committed.add_done_callback(lambda fut: _settle(fut, [done for _, done in waiting]))
        return others


def _settle(committed: asyncio.Future[None], waiting: list[asyncio.Future[None]]) -> None:
    error = AuditUnavailable("group commit cancelled") if committed.cancelled() else committed.exception()
    for done in waiting:
        if done.done():  # its exchange was cancelled meanwhile (the client went away); the record is written
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
