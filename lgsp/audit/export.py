"""Export and retention of the audit trail.

An export is JSON Lines, one object per line with a `type`: `record`, `seal`
(the seals that cover the exported records), `key` (the seal public keys,
retired ones included) and `base` (where each chain's exported part starts), so
`lgsp audit verify --file` can check it with nothing else at hand.

Retention archives the oldest records of each chain to such a file, then
removes them and records the chain's new base, itself sealed, so what remains
still verifies. On PostgreSQL a month partition whose records are all archived
is dropped whole instead of deleted row by row.

Both stream: records are read in batches from a server-side cursor and written
as they come, so memory stays flat at any size; `progress(n)` is told every
PROGRESS_EVERY records (the CLI prints it on stderr).
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import IO, Any, Callable

import orjson
from sqlalchemy import Engine, and_, delete, func, insert, or_, select, text

from lgsp.audit import seals
from lgsp.audit.writer import _iso
from lgsp.config import private_dir
from lgsp.storage import partitions
from lgsp.storage.schema import audit_chain_bases, audit_keys, audit_records, audit_seals

PROGRESS_EVERY = 100_000
Progress = Callable[[int], None]


def _datetime(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return _iso(value)
    raise TypeError(type(value).__name__)


def _line(kind: str, row: dict[str, Any]) -> bytes:
    # orjson hands datetimes to _datetime (the hash's own format); keys must be plain str.
    data = {"type": kind, **{str(k): v for k, v in row.items()}}
    return orjson.dumps(data, default=_datetime, option=orjson.OPT_PASSTHROUGH_DATETIME) + b"\n"


def export_jsonl(engine: Engine, start: dt.datetime | None, end: dt.datetime | None, out: IO[bytes],
                 *, chains: dict[str, tuple[int, int]] | None = None, progress: Progress | None = None
                 ) -> dict[str, int]:
    """Write records with start <= at < end (or, given `chains`, seq ranges per chain) and what verifies them."""
    counts = {"records": 0, "seals": 0, "chains": 0}
    ranges: dict[str, list[int]] = {}
    with engine.connect() as conn:
        query = select(audit_records).order_by(audit_records.c.chain, audit_records.c.seq)
        if chains is not None:
            query = query.where(_seq_ranges(chains))
        else:
            if start:
                query = query.where(audit_records.c.at >= start)
            if end:
                query = query.where(audit_records.c.at < end)
            if start or end:  # read the period's index range and sort it (on disk past the cache), not the whole trail
                query = query.with_hint(audit_records, "INDEXED BY ix_audit_at", "sqlite")
        result = conn.execution_options(yield_per=5000).execute(query)
        keys = ["type", *map(str, result.keys())]
        for row in result:
            span = ranges.setdefault(row.chain, [row.seq, row.seq, row.prev_hash])
            span[1] = row.seq
            out.write(orjson.dumps(dict(zip(keys, ("record", *row))), default=_datetime,
                                   option=orjson.OPT_PASSTHROUGH_DATETIME) + b"\n")
            counts["records"] += 1
            if progress and counts["records"] % PROGRESS_EVERY == 0:
                progress(counts["records"])
        for chain, (first, last, prev_hash) in ranges.items():
            out.write(_line("base", {"chain": chain, "base_seq": first - 1, "base_hash": prev_hash}))
            for seal in conn.execute(select(audit_seals).where(
                    audit_seals.c.chain == chain, audit_seals.c.seq >= first - 1, audit_seals.c.seq <= last,
                    audit_seals.c.seq > 0)):
                out.write(_line("seal", seal._asdict()))
                counts["seals"] += 1
        for key in conn.execute(select(audit_keys.c.kid, audit_keys.c.public_key, audit_keys.c.status)):
            out.write(_line("key", key._asdict()))
    counts["chains"] = len(ranges)
    return counts


def _seq_ranges(chains: dict[str, tuple[int, int]]):
    return or_(*[and_(audit_records.c.chain == c, audit_records.c.seq.between(lo, hi)) for c, (lo, hi) in chains.items()])


def retain(engine: Engine, older_than: dt.datetime, archive_dir: Path,
           progress: Progress | None = None) -> dict[str, Any]:
    """Archive and remove, per chain, the records before the first one at or after `older_than`.

    Every record removed is before `older_than` (the first record kept is the first at or
    after it, in chain order), so the deletes name that bound and read only the old partitions.
    """
    cut: dict[str, tuple[int, int]] = {}
    with engine.connect() as conn:
        for chain, lowest, keep_from in conn.execute(
            select(audit_records.c.chain, func.min(audit_records.c.seq),
                   func.min(audit_records.c.seq).filter(audit_records.c.at >= older_than))
            .group_by(audit_records.c.chain)
        ):
            if keep_from is None:
                last = conn.execute(select(func.max(audit_records.c.seq)).where(audit_records.c.chain == chain)).scalar()
            else:
                last = keep_from - 1
            if last >= lowest:
                cut[chain] = (lowest, last)
    if not cut:
        return {"records": 0, "chains": 0, "archive": None, "partitions_dropped": []}
    private_dir(archive_dir)
    path = archive_dir / f"audit-before-{older_than:%Y%m%dT%H%M%SZ}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}.jsonl"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        counts = export_jsonl(engine, None, None, out, chains=cut, progress=progress)
    signer = seals.signer(engine)
    dropped: list[str] = []
    with engine.begin() as conn:
        for chain, (lo, hi) in cut.items():
            head = conn.execute(select(audit_records.c.hash).where(
                audit_records.c.chain == chain, audit_records.c.seq == hi)).scalar_one()
            # The new base is sealed, so nobody can move it to hide a deletion.
            conn.execute(insert(audit_seals).values(**signer.seal(chain, hi, head, "retention")))
            conn.execute(delete(audit_chain_bases).where(audit_chain_bases.c.chain == chain))
            conn.execute(insert(audit_chain_bases).values(chain=chain, base_seq=hi, base_hash=head,
                                                          archive=path.name, at=dt.datetime.now(dt.timezone.utc)))
        if partitions.is_partitioned(conn):
            dropped = _drop_archived_months(conn, cut, older_than)
        for chain, (lo, hi) in cut.items():
            conn.execute(delete(audit_records).where(audit_records.c.chain == chain, audit_records.c.seq <= hi,
                                                      audit_records.c.at < older_than))
    return {"records": counts["records"], "chains": len(cut), "archive": str(path), "partitions_dropped": dropped}


def _drop_archived_months(conn, cut: dict[str, tuple[int, int]], older_than: dt.datetime) -> list[str]:
    """Drop the month partitions before `older_than` that hold only records being archived.

    A month can still hold a record to keep: one stamped before the cut-off but written after
    a record stamped after it (an exchange is stamped when it starts). Such a month is left to
    the row deletes.
    """
    values = ", ".join(f"(:c{i}, :h{i})" for i in range(len(cut)))
    params = {k: v for i, (chain, (_, hi)) in enumerate(cut.items()) for k, v in ((f"c{i}", chain), (f"h{i}", hi))}
    dropped = []
    for name, _month in partitions.whole_months_before(conn, older_than):
        kept = conn.execute(text(
            f"SELECT 1 FROM {name} r WHERE NOT EXISTS (SELECT 1 FROM (VALUES {values}) AS c(chain, hi) "
            "WHERE c.chain = r.chain AND r.seq <= c.hi) LIMIT 1"), params).first()
        if kept is None:
            partitions.drop_month(conn, name)
            dropped.append(name)
    return dropped
