"""Checks that anchor the audit trail outside the database: the set of chains, and the witness.

The per-chain checks (lgsp/audit/verify.py) prove each chain against its own seals;
a database writer can still delete a whole chain, or a chain's seals, or a chain's
tail together with the seals that cover it. These checks catch that:

    no_start_seal     a chain (records, seals or a base in the database) without a start seal
                      (seq 0, the genesis hash) made by a trusted key: its seals were deleted or
                      replaced, or the chain was made up
    chain_missing     the witness saw seals of a chain the database no longer has at all
    tail_deleted      the witness saw a chain's head at seq N; the chain in the database ends before N
    witness_mismatch  the record at a witnessed seq is not the one that was sealed (rewritten with
                      recomputed hashes, or missing inside the chain)
    seal_deleted      seals the witness holds are gone from the database
    witness_invalid   a witness line that cannot be read, or whose signature does not verify under
                      the trusted keys

They read the seals, the chain bases, each chain's last seq and the records at witnessed
seqs (an indexed lookup each), never the whole trail: cheap enough to run in full on
every verification, incremental or not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from sqlalchemy import func, select

from lgsp.audit import seals, witness
from lgsp.audit.verify import Finding
from lgsp.audit.writer import GENESIS
from lgsp.storage.schema import audit_chain_bases, audit_records, audit_seals

Lookup = Callable[[str, list[int]], dict[int, tuple[int, str]]]


@dataclass
class Anchored:
    findings: list[Finding]
    witness: dict  # where the witness was read, the database's name in it, how many of its seals it holds


def database_findings(conn, keys: Mapping[str, str], directory: Path | None = None) -> Anchored:
    """The chain-set and witness findings for the database behind `conn`, and what witness was read.

    Self-contained (it reads what it needs), so an incremental verification calls it in full."""
    r = audit_records.c
    ends = dict(conn.execute(select(r.chain, func.max(r.seq)).group_by(r.chain)).all())
    by_chain: dict[str, list[dict]] = {}
    for s in conn.execute(select(audit_seals)):
        by_chain.setdefault(s.chain, []).append(s._asdict())
    bases = {b.chain: b._asdict() for b in conn.execute(select(audit_chain_bases))}
    chains = set(ends) | set(by_chain) | set(bases)

    def lookup(chain: str, seqs: list[int]) -> dict[int, tuple[int, str]]:
        found: dict[int, tuple[int, str]] = {}
        for i in range(0, len(seqs), 500):
            rows = conn.execute(select(r.seq, r.id, r.hash).where(r.chain == chain, r.seq.in_(seqs[i:i + 500])))
            found.update({row.seq: (row.id, row.hash) for row in rows})
        return found

    findings = [Finding("no_start_seal", chain, (), f"the chain {problem}")
                for chain in sorted(chains) if (problem := _start_problem(by_chain.get(chain, []), keys))]
    stored = {(s["chain"], s["seq"], s["signature"]) for items in by_chain.values() for s in items}
    base_seqs = {chain: _sealed_base(b, by_chain.get(chain, []), keys) for chain, b in bases.items()}
    directory = directory or witness.witness_dir()
    db = witness.database_id(conn.engine.url)
    entries = list(witness.read(directory, db))
    findings += _witness_findings(entries, keys, chains, ends, base_seqs, stored, lookup)
    return Anchored(findings, {"directory": str(directory), "database": db, "seals": len(entries)})


def file_findings(chains: Mapping[str, list], bases: Mapping[str, Mapping], keys: Mapping[str, str],
                  directory: Path) -> list[Finding]:
    """An export compared with a witness: every witnessed head inside the exported range must match.

    (An export is a range: chains and records outside it are not expected, so only mismatches count.)"""
    findings, by_chain = _group(witness.read(directory, None))
    for chain, rows in sorted(chains.items()):
        if not rows or chain not in by_chain:
            continue
        claims = _Claims(chain, keys, findings)
        by_seq = {row["seq"]: row for row in rows}
        first = bases[chain]["base_seq"] if chain in bases else rows[0]["seq"] - 1
        for entry in _heads(by_chain[chain], first):
            if entry.seal["seq"] <= rows[-1]["seq"]:
                row = by_seq.get(entry.seal["seq"])
                _mismatch(claims, entry, (row["id"], row["hash"]) if row else None)
    return findings


def _start_problem(chain_seals: Iterable[Mapping], keys: Mapping[str, str]) -> str | None:
    """None if the chain has a valid start seal; otherwise what is wrong."""
    problems = []
    for seal in chain_seals:
        if seal["seq"] != 0:
            continue
        if seal["reason"] != "start" or seal["head_hash"] != GENESIS:
            problems.append(f"a seal at seq 0 is not a start seal ({seal['reason']})")
            continue
        problem = seals.verify(seal, keys)
        if problem is None:
            return None
        problems.append(problem)
    if not problems:
        return "has no start seal"
    return "has no valid start seal: " + "; ".join(problems)


def _sealed_base(base: Mapping, chain_seals: list[Mapping], keys: Mapping[str, str]) -> int:
    """The base seq, if a trusted retention seal vouches for it (else 0: nothing was legitimately removed)."""
    for seal in chain_seals:
        if (seal["reason"] == "retention" and seal["seq"] == base["base_seq"]
                and seal["head_hash"] == base["base_hash"] and seals.verify(seal, keys) is None):
            return base["base_seq"]
    return 0


def _group(entries: Iterable[witness.Entry]) -> tuple[list[Finding], dict[str, list[witness.Entry]]]:
    """Witness lines by chain; unreadable lines are findings at once."""
    findings: list[Finding] = []
    by_chain: dict[str, list[witness.Entry]] = {}
    for entry in entries:
        if entry.seal is None:
            findings.append(Finding("witness_invalid", "", (), f"witness line {entry.where}: {entry.problem}"))
        else:
            by_chain.setdefault(entry.seal["chain"], []).append(entry)
    return findings, by_chain


def _heads(entries: list[witness.Entry], after: int) -> list[witness.Entry]:
    """The witnessed heads above seq `after`, one per seq (a shutdown seal may repeat a head), in seq order."""
    return sorted({e.seal["seq"]: e for e in entries if e.seal["seq"] > after}.values(), key=lambda e: e.seal["seq"])


class _Claims:
    """Checks a witness line's signature only when it claims something the database contradicts:
    a line that agrees with the database proves nothing new, and thousands of them stay cheap."""

    def __init__(self, chain: str, keys: Mapping[str, str], findings: list[Finding]):
        self.chain, self.keys, self.findings = chain, keys, findings
        self._checked: dict[int, bool] = {}

    def genuine(self, entry: witness.Entry) -> bool:
        if id(entry) not in self._checked:
            problem = seals.verify(entry.seal, self.keys)
            if problem:
                self.findings.append(Finding("witness_invalid", self.chain, (),
                                             f"witness line {entry.where} (seq {entry.seal['seq']}): {problem}"))
            self._checked[id(entry)] = problem is None
        return self._checked[id(entry)]

    def add(self, kind: str, ids: tuple[int, ...], detail: str) -> None:
        self.findings.append(Finding(kind, self.chain, ids, detail))


def _when(entry: witness.Entry) -> str:
    return f"{entry.seal['at']:%Y-%m-%d %H:%M:%S} UTC"


def _mismatch(claims: _Claims, entry: witness.Entry, record: tuple[int, str] | None) -> None:
    seq, head = entry.seal["seq"], entry.seal["head_hash"]
    if (record is not None and record[1] == head) or not claims.genuine(entry):
        return
    if record is None:
        claims.add("witness_mismatch", (),
                   f"the record at seq {seq}, sealed at {_when(entry)} and witnessed, is missing")
    else:
        claims.add("witness_mismatch", (record[0],),
                   f"the record at seq {seq} is not the one sealed at {_when(entry)} and witnessed "
                   f"(witnessed hash {head[:12]}…, now {record[1][:12]}…)")


def _first_genuine(claims: _Claims, entries: Iterable[witness.Entry]) -> witness.Entry | None:
    return next((e for e in sorted(entries, key=lambda e: -e.seal["seq"]) if claims.genuine(e)), None)


def _witness_findings(entries: Iterable[witness.Entry], keys: Mapping[str, str], chains: set[str],
                      ends: Mapping[str, int], base_seqs: Mapping[str, int], stored: set[tuple],
                      lookup: Lookup) -> list[Finding]:
    findings, by_chain = _group(entries)
    for chain, items in sorted(by_chain.items()):
        claims = _Claims(chain, keys, findings)
        if chain not in chains:
            top = _first_genuine(claims, items)
            if top is not None:
                claims.add("chain_missing", (), f"the witness holds {len(items)} seal(s) of this chain, the last at "
                           f"seq {top.seal['seq']} ({_when(top)}); the database has no record, seal or base of it")
            continue
        gone = [e for e in items if (chain, e.seal["seq"], e.seal["signature"]) not in stored and claims.genuine(e)]
        if gone:
            seqs = sorted({e.seal["seq"] for e in gone})
            claims.add("seal_deleted", (), f"{len(seqs)} witnessed seal(s) are gone from the database, at seq "
                       + ", ".join(map(str, seqs[:20])) + (" …" if len(seqs) > 20 else ""))
        base = base_seqs.get(chain, 0)
        end = ends.get(chain, base)
        top = _first_genuine(claims, [e for e in items if e.seal["seq"] > end])
        if top is not None:
            claims.add("tail_deleted", (), f"the witness saw this chain's head at seq {top.seal['seq']} "
                       f"({_when(top)}); "
                       f"the chain in the database ends at seq {end}: records {end + 1}–{top.seal['seq']} are gone")
        heads = [e for e in _heads(items, base) if e.seal["seq"] <= end]
        present = lookup(chain, [e.seal["seq"] for e in heads])
        for entry in heads:
            _mismatch(claims, entry, present.get(entry.seal["seq"]))
    return findings
