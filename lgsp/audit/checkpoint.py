"""Verification checkpoints: where the next incremental `lgsp audit verify` starts.

After a verify with no findings, a checkpoint is written into the audit trail
itself as an admin record (request_id `lgsp:audit-verify-checkpoint`), in a
chain of its own that is sealed at once (start and shutdown seals). Its detail
holds, per chain, the highest sealed seq the verify checked, that record's hash
and the chain's shutdown seq, if closed:

    {"action": "audit.verify.checkpoint", "after": {"mode": "full", "records": …,
     "chains": {"<chain>": [seq, "<hash>", shutdown_seq | null], …}}}

Being a record, the checkpoint is hashed and sealed like any other: it is used
only if its chain verifies in full and a valid seal covers it, so editing it, or
forging one without the seal key, only makes the next incremental verify start
further back (from an older checkpoint, or from the beginning).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import Engine, select

from lgsp.storage.schema import audit_records

MARKER = "lgsp:audit-verify-checkpoint"
ACTION = "audit.verify.checkpoint"
CANDIDATES = 5  # newest checkpoints tried before falling back to a full verify


@dataclass(frozen=True)
class Checkpoint:
    chain: str
    seq: int
    at: dt.datetime
    heads: dict[str, list]

    @property
    def when(self) -> str:
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=dt.timezone.utc)
        return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def summary(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "at": self.when, "chains": len(self.heads)}


def _heads(detail: Any) -> dict[str, list] | None:
    """The per-chain heads of a checkpoint record's detail, or None if it is not one."""
    if not isinstance(detail, dict) or detail.get("action") != ACTION or not isinstance(detail.get("after"), dict):
        return None
    chains = detail["after"].get("chains")
    if not isinstance(chains, dict):
        return None
    heads = {}
    for chain, head in chains.items():
        if not (isinstance(head, list) and len(head) == 3 and isinstance(head[0], int) and isinstance(head[1], str)
                and (head[2] is None or isinstance(head[2], int))):
            return None
        heads[chain] = head
    return heads


def latest(engine: Engine, keys: Mapping[str, str]) -> Checkpoint | None:
    """The newest checkpoint whose own chain verifies and seals it, or None."""
    from lgsp.audit.verify import verify_chain

    c = audit_records.c
    with engine.connect() as conn:
        candidates = conn.execute(select(c.chain, c.seq, c.at, c.detail).where(
            c.request_id == MARKER, c.kind == "admin").order_by(c.at.desc(), c.id.desc()).limit(CANDIDATES)).all()
    for candidate in candidates:
        heads = _heads(candidate.detail)
        if heads is None:
            continue
        report = verify_chain(engine, candidate.chain, keys)
        sealed = report.heads.get(candidate.chain)
        if report.ok and sealed is not None and sealed[0] >= candidate.seq:
            return Checkpoint(candidate.chain, candidate.seq, candidate.at, heads)
    return None


def record(engine: Engine, report, actor: str = "lgsp audit verify") -> tuple[str, int] | None:
    """Write a checkpoint for a clean report (its chain sealed before returning); (chain, seq) or None."""
    from lgsp.audit.writer import AuditWriter

    if not report.ok:
        return None
    writer = AuditWriter(engine, batch_max=1)
    try:
        writer.commit_sync({
            "at": dt.datetime.now(dt.timezone.utc), "kind": "admin", "outcome": "ok", "request_id": MARKER,
            "detail": {"actor": actor, "action": ACTION, "target": "audit", "before": None,
                       "after": {"mode": report.mode, "records": report.records, "chains": report.heads}},
        })
    finally:
        writer.close()  # the shutdown seal covers the checkpoint now, not at exit
    return writer.chain, 1
