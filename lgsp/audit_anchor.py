"""Checks that anchor the audit trail outside the database: the set of chains, and the witness.

The per-chain checks (lgsp/audit_verify.py) prove each chain against its own seals;
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

from pathlib import Path
from typing import Callable, Iterable, Mapping

from sqlalchemy import func, select

from lgsp import seals, witness
from lgsp.audit import GENESIS
from lgsp.audit_verify import Finding
from lgsp.storage.schema import audit_chain_bases, audit_records, audit_seals

Lookup = Callable[[str, list[int]], dict[int, tuple[int, str]]]


def database_findings(conn, keys: Mapping[str, str], directory: Path | None = None) -> list[Finding]:
    """The chain-set and witness findings for the database behind `conn`."""
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
    entries = witness.read(directory or witness_dir(), witness.database_id(conn.engine.url))
    findings += _witness_findings(entries, keys, chains, ends, base_seqs, stored, lookup)
    return findings


def file_findings(chains: Mapping[str, list], bases: Mapping[str, Mapping], keys: Mapping[str, str],
                  directory: Path) -> list[Finding]:
    """An export compared with a witness: every witnessed head inside the exported range must match.

    (An export is a range: chains and records outside it are not expected, so only mismatches count.)"""
    findings, valid = _valid_entries(witness.read(directory, None), keys)
    for chain, rows in sorted(chains.items()):
        if not rows:
            continue
        by_seq = {row["seq"]: row for row in rows}
        first = bases[chain]["base_seq"] if chain in bases else rows[0]["seq"] - 1
        heads = {s["seq"]: s for s in valid.get(chain, [])}.values()  # a shutdown seal may repeat a head
        for seal in sorted(heads, key=lambda s: s["seq"]):
            if first < seal["seq"] <= rows[-1]["seq"]:
                row = by_seq.get(seal["seq"])
                findings += _mismatch(chain, seal, (row["id"], row["hash"]) if row else None)
    return findings


def witness_dir() -> Path:
    return witness.witness_dir()


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


def _valid_entries(entries: Iterable[witness.Entry], keys: Mapping[str, str]) -> tuple[list[Finding], dict]:
    findings: list[Finding] = []
    valid: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.seal is None:
            findings.append(Finding("witness_invalid", "", (), f"witness line {entry.where}: {entry.problem}"))
            continue
        problem = seals.verify(entry.seal, keys)
        if problem:
            findings.append(Finding("witness_invalid", entry.seal["chain"], (),
                                    f"witness line {entry.where} (seq {entry.seal['seq']}): {problem}"))
            continue
        valid.setdefault(entry.seal["chain"], []).append(entry.seal)
    return findings, valid


def _mismatch(chain: str, seal: Mapping, record: tuple[int, str] | None) -> list[Finding]:
    if record is None:
        return [Finding("witness_mismatch", chain, (),
                        f"the record at seq {seal['seq']}, sealed at {seal['at']:%Y-%m-%d %H:%M:%S} UTC and witnessed, "
                        "is missing")]
    if record[1] != seal["head_hash"]:
        return [Finding("witness_mismatch", chain, (record[0],),
                        f"the record at seq {seal['seq']} is not the one sealed at {seal['at']:%Y-%m-%d %H:%M:%S} UTC "
                        f"and witnessed (witnessed hash {seal['head_hash'][:12]}…, now {record[1][:12]}…)")]
    return []


def _witness_findings(entries: Iterable[witness.Entry], keys: Mapping[str, str], chains: set[str],
                      ends: Mapping[str, int], base_seqs: Mapping[str, int], stored: set[tuple],
                      lookup: Lookup) -> list[Finding]:
    findings, valid = _valid_entries(entries, keys)
    for chain, items in sorted(valid.items()):
        top = max(items, key=lambda s: s["seq"])
        when = f"{top['at']:%Y-%m-%d %H:%M:%S} UTC"
        if chain not in chains:
            findings.append(Finding("chain_missing", chain, (),
                                    f"the witness holds {len(items)} seal(s) of this chain, the last at seq {top['seq']} "
                                    f"({when}); the database has no record, seal or base of it"))
            continue
        missing = sorted({s["seq"] for s in items if (chain, s["seq"], s["signature"]) not in stored})
        if missing:
            findings.append(Finding("seal_deleted", chain, (),
                                    f"{len(missing)} witnessed seal(s) are gone from the database, at seq "
                                    + ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")))
        base = base_seqs.get(chain, 0)
        end = ends.get(chain, base)
        heads = list({s["seq"]: s for s in items if s["seq"] > base}.values())  # a shutdown seal may repeat a head
        if top["seq"] > end:
            findings.append(Finding("tail_deleted", chain, (),
                                    f"the witness saw this chain's head at seq {top['seq']} ({when}); the chain in the "
                                    f"database ends at seq {end}: records {end + 1}–{top['seq']} are gone"))
        inside = sorted({s["seq"] for s in heads if s["seq"] <= end})
        present = lookup(chain, inside)
        for seal in sorted(heads, key=lambda s: s["seq"]):
            if seal["seq"] <= end:
                findings += _mismatch(chain, seal, present.get(seal["seq"]))
    return findings
