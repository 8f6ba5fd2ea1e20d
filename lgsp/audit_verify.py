"""The audit verifier: checks every chain and every seal, in the database or in an export file.

What each kind of finding means (each names the record ids involved):
    edited        a record's content no longer matches its own hash
    renumbered    a record's seq was changed (its hash holds for a neighbouring seq):
                  a record was inserted or removed before it, or records were reordered
    deleted       a seq is missing between two records
    inserted      a record that does not belong: duplicate seq, a fork (two records claim
                  the same predecessor; the one nothing follows), or records after a
                  chain's shutdown seal
    reordered     a record links to a record that comes after it in seq order
    broken_link   a record does not link to the record before it, for no reason above
    truncated     a seal covers records that are no longer there
    seal_mismatch the record at a seal's seq is not the record that was sealed
                  (rewritten with recomputed hashes)
    forged_seal   a seal's signature does not verify
    unknown_key   a seal names a key that is not known
    untrusted_key a seal was made by a key the database holds but the operator's trust does not
                  (seal keys are trusted only from outside the database: lgsp/audit_trust.py)
Then the checks anchored outside the database (lgsp/audit_anchor.py): no_start_seal,
chain_missing, tail_deleted, witness_mismatch, seal_deleted, witness_invalid.
Unsealed records at the end of a chain (written after its last seal, e.g. before a
crash) are reported as information, not as findings.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import orjson
from sqlalchemy import Engine, select

from lgsp import seals
from lgsp.audit import GENESIS, record_hash
from lgsp.storage.schema import audit_chain_bases, audit_records, audit_seals


@dataclass(frozen=True)
class Finding:
    kind: str
    chain: str
    record_ids: tuple[int, ...]
    detail: str


@dataclass
class Report:
    chains: int = 0
    records: int = 0
    seals: int = 0
    findings: list[Finding] = field(default_factory=list)
    unsealed: dict[str, int] = field(default_factory=dict)
    witness: dict[str, Any] = field(default_factory=dict)  # what the database was compared with (audit_anchor)

    @property
    def ok(self) -> bool:
        return not self.findings

    def flagged_ids(self) -> set[int]:
        return {i for f in self.findings for i in f.record_ids}


def _shifted_hash_matches(row: Mapping[str, Any]) -> int | None:
    """If the record's hash holds for seq±1..3, that seq (it was renumbered)."""
    for delta in (-1, 1, -2, 2, -3, 3):
        if row["seq"] + delta >= 1 and record_hash(dict(row, seq=row["seq"] + delta)) == row["hash"]:
            return row["seq"] + delta
    return None


def check_chain(chain: str, rows: list[Mapping[str, Any]], chain_seals: list[Mapping[str, Any]],
                keys: Mapping[str, str], base: Mapping[str, Any] | None = None,
                sealed_base: bool = True) -> tuple[list[Finding], int]:
    """Findings for one chain (rows in seq order) and the number of unsealed records at its end.

    `base` is where the chain starts when its oldest records were removed by
    retention (database: it must carry a valid retention seal) or left out of an
    export (file: `sealed_base=False`, the export's start is taken as given).
    """
    findings: list[Finding] = []

    def find(kind: str, ids: Iterable[int], detail: str) -> None:
        findings.append(Finding(kind, chain, tuple(ids), detail))

    if base and sealed_base and not any(
        s["reason"] == "retention" and s["seq"] == base["base_seq"] and s["head_hash"] == base["base_hash"]
        and seals.verify(s, keys) is None for s in chain_seals
    ):
        find("deleted", [rows[0]["id"]] if rows else [],
             f"the chain starts after seq {base['base_seq']} without a valid retention seal there")

    expected_seq = (base["base_seq"] + 1) if base else 1
    prev_hash = base["base_hash"] if base else GENESIS
    prev_id: int | None = None
    by_hash = {r["hash"]: r for r in rows}
    position = {r["id"]: i for i, r in enumerate(rows)}
    linked_to = {r["prev_hash"] for r in rows}
    claims: dict[str, list[int]] = {}
    for r in rows:
        claims.setdefault(r["prev_hash"], []).append(r["id"])
    for row in rows:
        rid, seq = row["id"], row["seq"]
        explained = False
        if seq < expected_seq:
            find("inserted", [rid], f"seq {seq} appears again (or out of order) after seq {expected_seq - 1}")
            explained = True
        elif seq > expected_seq:
            find("deleted", [i for i in (prev_id, rid) if i is not None],
                 f"seq {expected_seq}–{seq - 1} missing between these records")
            explained = True
        if record_hash(row) != row["hash"]:
            moved = _shifted_hash_matches(row)
            if moved is not None:
                find("renumbered", [rid], f"seq changed from {moved} to {seq}")
            else:
                find("edited", [rid], "content does not match its hash")
            explained = True
        if row["hash"] not in linked_to and len(claims[row["prev_hash"]]) > 1 and row is not rows[-1]:
            others = ", ".join(str(i) for i in claims[row["prev_hash"]] if i != rid)
            find("inserted", [rid], f"claims the same predecessor as record {others}, and no record follows it")
            explained = True
        if row["prev_hash"] != prev_hash:
            target = by_hash.get(row["prev_hash"])
            if target is not None and position[target["id"]] > position[rid]:
                find("reordered", [rid, target["id"]], f"links to record {target['id']}, which comes after it")
            elif not explained:
                find("broken_link", [rid], "does not link to the record before it")
        prev_hash, prev_id = row["hash"], rid
        expected_seq = max(expected_seq, seq) + 1

    last_seq = rows[-1]["seq"] if rows else (base["base_seq"] if base else 0)
    by_seq = {r["seq"]: r for r in rows}
    closed_at: int | None = None
    sealed_to = base["base_seq"] if base else 0
    for seal in chain_seals:
        problem = seals.verify(seal, keys)
        if problem:
            kind = "unknown_key" if "unknown key" in problem else "untrusted_key" if "not trusted" in problem \
                else "forged_seal"
            find(kind, [r["id"] for r in rows if r["seq"] == seal["seq"]], f"seal at seq {seal['seq']}: {problem}")
            continue
        if seal["seq"] == 0 or (base and seal["seq"] <= base["base_seq"]):
            continue
        sealed = by_seq.get(seal["seq"])
        if seal["seq"] > last_seq:
            find("truncated", [rows[-1]["id"]] if rows else [],
                 f"a seal covers seq {seal['seq']}, the chain ends at seq {last_seq}")
        elif sealed is None or sealed["hash"] != seal["head_hash"]:
            find("seal_mismatch", [sealed["id"]] if sealed else [],
                 f"the record at seq {seal['seq']} is not the one sealed at {seal['at']}")
        sealed_to = max(sealed_to, seal["seq"])
        if seal["reason"] == "shutdown":
            closed_at = seal["seq"] if closed_at is None else max(closed_at, seal["seq"])
    if closed_at is not None:
        after = [r["id"] for r in rows if r["seq"] > closed_at]
        if after:
            find("inserted", after, f"records after the chain's shutdown seal at seq {closed_at}")
    return findings, max(0, last_seq - sealed_to)


def _check_all(chains: Iterable[tuple[str, list]], seals_by_chain: dict[str, list], bases: dict[str, Mapping],
               keys: Mapping[str, str], sealed_base: bool = True) -> Report:
    """Check chain by chain (`chains` may be a stream), then the chains that have only seals."""
    report = Report()
    seen: set[str] = set()

    def check(chain: str, rows: list) -> None:
        found, unsealed = check_chain(chain, rows, seals_by_chain.get(chain, []), keys, bases.get(chain), sealed_base)
        report.chains += 1
        report.records += len(rows)
        report.seals += len(seals_by_chain.get(chain, []))
        report.findings += found
        if unsealed:
            report.unsealed[chain] = unsealed

    for chain, rows in chains:
        seen.add(chain)
        check(chain, rows)
    for chain in sorted(set(seals_by_chain) - seen):  # sealed, but every record gone
        check(chain, [])
    return report


def _stream_chains(conn, progress: Callable[[int], None] | None = None) -> Iterator[tuple[str, list]]:
    """Each chain's records in seq order, one chain in memory at a time."""
    current, rows, count = None, [], 0
    result = conn.execution_options(yield_per=5000).execute(
        select(audit_records).order_by(audit_records.c.chain, audit_records.c.seq, audit_records.c.id))
    for r in result:
        if r.chain != current:
            if current is not None:
                yield current, rows
            current, rows = r.chain, []
        rows.append(r._asdict())
        count += 1
        if progress and count % PROGRESS_EVERY == 0:
            progress(count)
    if current is not None:
        yield current, rows


PROGRESS_EVERY = 100_000


def verify_database(engine: Engine, progress: Callable[[int], None] | None = None,
                    witness_dir: Path | None = None, trust_file: Path | None = None) -> Report:
    """Verify every chain and seal in the database, and the database against the witness
    (`witness_dir`, default the configured one); `progress(n)` is told every 100,000 records read.
    Seal keys are trusted from `trust_file` alone if given, else as lgsp/audit_trust.py says."""
    from lgsp import audit_anchor, audit_trust

    with engine.connect() as conn:
        seals_by_chain: dict[str, list] = {}
        for s in conn.execute(select(audit_seals).order_by(audit_seals.c.chain, audit_seals.c.seq)):
            seals_by_chain.setdefault(s.chain, []).append(s._asdict())
        bases = {b.chain: b._asdict() for b in conn.execute(select(audit_chain_bases))}
        keys = audit_trust.trusted_keys(engine, trust_file=trust_file)  # never the database's word alone
        report = _check_all(_stream_chains(conn, progress), seals_by_chain, bases, keys)
        anchored = audit_anchor.database_findings(conn, keys, witness_dir)
        report.findings += anchored.findings
        report.witness = anchored.witness
        return report


# -- export files -------------------------------------------------------------------------

def _revive(row: dict) -> dict:
    row["at"] = dt.datetime.fromisoformat(row["at"].replace("Z", "+00:00"))
    return row


def verify_file(path: Path, trust_file: Path | None = None, witness_dir: Path | None = None) -> Report:
    """Verify an export (JSON Lines: records, seals, keys and chain bases) offline.

    The keys in the file are not trusted: seals verify with `trust_file` (or the configured
    trust, see lgsp/audit_trust.py). With `witness_dir`, witnessed heads inside the export must match."""
    chains: dict[str, list] = {}
    seals_by_chain: dict[str, list] = {}
    bases: dict[str, Mapping] = {}
    keys: dict[str, str] = {}
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            item = orjson.loads(line)
            kind = item.pop("type")
            if kind == "record":
                chains.setdefault(item["chain"], []).append(_revive(item))
            elif kind == "seal":
                seals_by_chain.setdefault(item["chain"], []).append(_revive(item))
            elif kind == "key":
                keys[item["kid"]] = item["public_key"]
            elif kind == "base":
                bases[item["chain"]] = item
    for rows in chains.values():
        rows.sort(key=lambda r: (r["seq"], r["id"]))
    for items in seals_by_chain.values():
        items.sort(key=lambda s: s["seq"])
    from lgsp import audit_anchor, audit_trust

    trusted = audit_trust.trusted_keys(trust_file=trust_file, seen=keys)
    report = _check_all(sorted(chains.items()), seals_by_chain, bases, trusted, sealed_base=False)
    if witness_dir is not None:
        report.findings += audit_anchor.file_findings(chains, bases, trusted, witness_dir)
    return report
