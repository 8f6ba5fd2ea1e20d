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
    untrusted_key a seal was made by a key the database holds but the operator's trust does not
                  (seal keys are trusted only from outside the database: lgsp/audit/trust.py)
    unknown_key   a seal names a key that is not known
Then the checks anchored outside the database (lgsp/audit/anchor.py): no_start_seal,
chain_missing, tail_deleted, witness_mismatch, seal_deleted, witness_invalid.
Unsealed records at the end of a chain (written after its last seal, e.g. before a
crash) are reported as information, not as findings.

Full verification (the default) reads every record and seal, chains in
parallel across processes, a long chain cut into segments
(lgsp/audit/verify_scan.py; the per-record checks are in
lgsp/audit/verify_chain.py). A record's relations (forks, reordering) are looked
for within 2,048 seqs either side; a record moved further is still reported, as
a broken link or a deleted/inserted record.

Incremental verification (lgsp/audit/checkpoint.py) starts from the last
checkpoint: a sealed admin record, written after a clean verify, holding per
chain the highest sealed seq verified and its hash. What it re-checks: that the
checkpoint record's own chain verifies and seals it; for each chain in the
checkpoint, that the record at the checkpoint seq is still there, alone, and
hashes to the checkpointed hash (so rewriting verified history with recomputed
hashes is caught at that boundary); everything after that seq (records, links,
seals, shutdown) as a full verify would; chains not in the checkpoint in full;
chains in the checkpoint that have vanished. What it does not re-check: records
and seals before the checkpoint seq (an edit there that leaves the checkpoint
record alone, or a record inserted there, is found by the next full verify only),
nor forks or reordering across the checkpoint boundary.
"""
from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import orjson
from sqlalchemy import Connection, Engine, select

from lgsp.audit import seals
from lgsp.audit.verify_chain import BLOCK, Finding, SegmentResult, Start, check_rows, closed_at_of, record_problem
from lgsp.audit.verify_scan import SEGMENT, Task, chains_in, run_task, segments, seq_range
from lgsp.storage.schema import audit_chain_bases, audit_records, audit_seals

__all__ = ["Finding", "Report", "Progress", "check_chain", "verify_database", "verify_file"]

PROGRESS_EVERY = 100_000
PARALLEL_FROM = 200_000  # records: below this, starting worker processes costs more than it saves


@dataclass
class Report:
    chains: int = 0
    records: int = 0
    seals: int = 0
    findings: list[Finding] = field(default_factory=list)
    unsealed: dict[str, int] = field(default_factory=dict)
    witness: dict[str, Any] = field(default_factory=dict)  # what the database was compared with (audit_anchor)
    # Per chain, the highest valid seal verified: [seq, hash, shutdown seq or None] (what a checkpoint keeps).
    heads: dict[str, list] = field(default_factory=dict)
    mode: str = "full"
    checkpoint: dict[str, Any] | None = None   # incremental: the checkpoint it started from

    @property
    def ok(self) -> bool:
        return not self.findings

    def flagged_ids(self) -> set[int]:
        return {i for f in self.findings for i in f.record_ids}


class Progress(int):
    """Records read so far (an int, as before), with chains done and the rate."""
    chains_done: int
    chains: int
    seconds: float

    def __new__(cls, records: int, chains_done: int, chains: int, seconds: float) -> "Progress":
        p = super().__new__(cls, records)
        p.chains_done, p.chains, p.seconds = chains_done, chains, seconds
        return p

    @property
    def rate(self) -> float:
        return int(self) / self.seconds if self.seconds > 0 else 0.0


# -- one chain as a list (export files, tests) --------------------------------------------

def _base_finding(chain: str, base: Mapping[str, Any], chain_seals: Iterable[Mapping[str, Any]],
                  keys: Mapping[str, str], first_id: int | None) -> Finding | None:
    if any(s["reason"] == "retention" and s["seq"] == base["base_seq"] and s["head_hash"] == base["base_hash"]
           and seals.verify(s, keys) is None for s in chain_seals):
        return None
    return Finding("deleted", chain, (first_id,) if first_id is not None else (),
                   f"the chain starts after seq {base['base_seq']} without a valid retention seal there")


def _chain_start(base: Mapping[str, Any] | None) -> Start:
    if not base:
        return Start()
    return Start(expected_seq=base["base_seq"] + 1, prev_hash=base["base_hash"], base_seq=base["base_seq"])


def check_chain(chain: str, rows: list[Mapping[str, Any]], chain_seals: list[Mapping[str, Any]],
                keys: Mapping[str, str], base: Mapping[str, Any] | None = None,
                sealed_base: bool = True) -> tuple[list[Finding], int]:
    """Findings for one chain held as a list (rows in seq order), and its unsealed records at the end.

    `base` is where the chain starts when its oldest records were removed by
    retention (database: it must carry a valid retention seal) or left out of an
    export (file: `sealed_base=False`, the export's start is taken as given).
    """
    found, unsealed, _ = _check_listed(chain, rows, chain_seals, keys, base, sealed_base)
    return found, unsealed


def _check_listed(chain, rows, chain_seals, keys, base, sealed_base):
    base_finding = None
    if base and sealed_base:
        base_finding = _base_finding(chain, base, chain_seals, keys, rows[0]["id"] if rows else None)
    base_seq = base["base_seq"] if base else None
    closed_at = closed_at_of(chain_seals, keys, base_seq)
    result = check_rows(chain, rows, chain_seals, keys, _chain_start(base), closed_at)
    findings, unsealed, head = _merge(chain, [result], base_seq, base_finding, closed_at)
    return findings, unsealed, (head, result)


def _merge(chain: str, results: list[SegmentResult], base_seq: int | None, base_finding: Finding | None,
           closed_at: int | None, head: list | None = None) -> tuple[list[Finding], int, list | None]:
    """A chain's findings from its segments (in order), its unsealed count and its verified head."""
    findings = [base_finding] if base_finding else []
    for r in results:
        findings += r.row_findings
    for r in results:
        findings += r.seal_findings
    after = [i for r in results for i in r.after_close]
    if after:
        findings.append(Finding("inserted", chain, tuple(after),
                                f"records after the chain's shutdown seal at seq {closed_at}"))
    last = results[-1].last if results else None
    last_seq = last[0] if last else (base_seq or 0)
    sealed = [r.sealed for r in results if r.sealed]
    top = max(sealed, key=lambda s: s[0]) if sealed else None
    if top is not None and (head is None or top[0] > head[0]):
        head = [top[0], top[1], closed_at]
    elif head is not None:
        head = [head[0], head[1], closed_at]
    sealed_to = max(base_seq or 0, head[0] if head else 0)
    return findings, max(0, last_seq - sealed_to), head


def _add(report: Report, chain: str, results: list[SegmentResult], findings: list[Finding], unsealed: int,
         head: list | None) -> None:
    report.chains += 1
    report.records += sum(r.records for r in results)
    report.seals += sum(r.seals for r in results)
    report.findings += findings
    if unsealed:
        report.unsealed[chain] = unsealed
    if head is not None and head[0] > 0:
        report.heads[chain] = head


# -- the database ---------------------------------------------------------------------------

@dataclass
class _ChainPlan:
    chain: str
    base_seq: int | None
    base_finding: Finding | None
    closed_at: int | None
    tasks: list[int] = field(default_factory=list)
    span: int = 0                            # seqs to read (an estimate of the records)
    head: list | None = None                 # incremental: the checkpoint head it continues from
    extra: list[Finding] = field(default_factory=list)


def _url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _shutdown_seals(conn: Connection, chain: str, after: int | None) -> list[dict]:
    s = audit_seals.c
    query = select(s.chain, s.seq, s.head_hash, s.at, s.kid, s.signature, s.reason).where(
        s.chain == chain, s.reason == "shutdown")
    if after is not None:
        query = query.where(s.seq > after)
    return [r._asdict() for r in conn.execute(query)]


def _check_head(conn: Connection, chain: str, head: list, span: tuple[int, int] | None,
                when: str) -> tuple[list[Finding], int | None]:
    """Is the record a checkpoint verified at `head` still there, alone, and the same? (its id if so)"""
    seq, hash_ = head[0], head[1]
    rows = [r._asdict() for r in conn.execute(select(audit_records).where(
        audit_records.c.chain == chain, audit_records.c.seq == seq).order_by(audit_records.c.id))]
    same = [r for r in rows if r["hash"] == hash_ and record_problem(r, hash_) is None]
    if not rows:
        kind = "deleted" if span and span[1] > seq else "truncated"
        return [Finding(kind, chain, (), f"the record at seq {seq} verified by the checkpoint of {when} is gone")], None
    if not same:
        edited = [r["id"] for r in rows if r["hash"] == hash_]
        if edited:
            return [Finding("edited", chain, tuple(edited), "content does not match its hash")], None
        return [Finding("seal_mismatch", chain, tuple(r["id"] for r in rows),
                        f"the record at seq {seq} is not the one the checkpoint of {when} verified")], None
    others = [r["id"] for r in rows if r is not same[0]]
    found = [Finding("inserted", chain, tuple(others), f"seq {seq} appears again beside the checkpointed record")
             ] if others else []
    return found, same[0]["id"]


def _plan_chain(conn: Connection, chain: str, base: Mapping[str, Any] | None, keys: Mapping[str, str], url: str,
                tasks: list[Task], segment: int, head: list | None, when: str = "") -> _ChainPlan:
    """The tasks that verify one chain: all of it, or (given a checkpoint head) what follows the head."""
    base_seq = base["base_seq"] if base else None
    span = seq_range(conn, chain)
    chain_start = _chain_start(base)
    if head is not None:
        plan = _ChainPlan(chain, base_seq, None, None, head=head)
        plan.extra, head_id = _check_head(conn, chain, head, span, when)
        closed = closed_at_of(_shutdown_seals(conn, chain, head[0]), keys, base_seq)
        plan.closed_at = head[2] if closed is None else closed
        first_lo = from_seq = head[0] + 1
        given: Start | None = Start(expected_seq=head[0] + 1, prev_hash=head[1], prev_id=head_id, prev_seq=head[0],
                                    base_seq=base_seq)
    else:
        plan = _ChainPlan(chain, base_seq, None, closed_at_of(_shutdown_seals(conn, chain, None), keys, base_seq))
        if base:
            s, c = audit_seals.c, audit_records.c
            at_base = [r._asdict() for r in conn.execute(select(
                s.chain, s.seq, s.head_hash, s.at, s.kid, s.signature, s.reason
            ).where(s.chain == chain, s.seq == base_seq))]
            first_id = conn.execute(select(c.id).where(c.chain == chain).order_by(c.seq, c.id).limit(1)).scalar()
            plan.base_finding = _base_finding(chain, base, at_base, keys, first_id)
        first_lo, from_seq, given = None, (span[0] if span else 0), None
    high = span[1] if span else from_seq
    plan.span = max(0, high - from_seq + 1)
    for i, (lo, hi) in enumerate(segments(from_seq, high, first_lo, size=segment)):
        if i == 0:
            read_from = lo
        else:  # one block of context before the segment, never below where this verify starts
            read_from = lo - BLOCK if first_lo is None else max(lo - BLOCK, first_lo)
        plan.tasks.append(len(tasks))
        tasks.append(Task(url=url, chain=chain, lo=lo, hi=hi, read_from=read_from, chain_start=chain_start,
                          closed_at=plan.closed_at, keys=keys, is_last=hi is None, start=given if i == 0 else None))
    return plan


def verify_database(engine: Engine, progress: Callable[[int], None] | None = None,
                    witness_dir: Path | None = None, trust_file: Path | None = None, *, jobs: int | None = None,
                    incremental: bool = False, keys: Mapping[str, str] | None = None,
                    segment: int = SEGMENT) -> Report:
    """Verify every chain and seal in the database (or, `incremental`, what follows the last checkpoint).

    `progress(p)` is told every 100,000 records or so (p: a Progress, an int of records read).
    `jobs`: worker processes (default: one per CPU once the trail is big enough to gain from them).
    `keys`: seal public keys (kid → hex) trusted from outside the database; default: `trust_file` alone if
    given, else as lgsp/audit/trust.py says — never the database's word alone. The database is then checked
    against the witness (`witness_dir`, default the configured one) and for chains without a start seal.
    """
    from lgsp.audit import anchor as audit_anchor
    from lgsp.audit import checkpoint as audit_checkpoint
    from lgsp.audit import trust as audit_trust

    keys = keys if keys is not None else audit_trust.trusted_keys(engine, trust_file=trust_file)
    started = time.perf_counter()
    report = Report(mode="incremental" if incremental else "full")
    checkpoint = audit_checkpoint.latest(engine, keys) if incremental else None
    heads: dict[str, list] = {}
    if checkpoint is not None:
        report.checkpoint = checkpoint.summary()
        heads = checkpoint.heads
    elif incremental:
        report.mode = "full"  # no usable checkpoint yet: everything is new
    url = _url_of(engine)
    tasks: list[Task] = []
    plans: list[_ChainPlan] = []
    with engine.connect() as conn:
        bases = {b.chain: b._asdict() for b in conn.execute(select(audit_chain_bases))}
        present = chains_in(conn)
        for chain in present:
            base, head = bases.get(chain), heads.get(chain)
            if head is not None and base and base["base_seq"] >= head[0]:
                head = None  # retention moved the sealed base past the checkpoint: start from the base
            plans.append(_plan_chain(conn, chain, base, keys, url, tasks, segment, head,
                                     checkpoint.when if checkpoint else ""))
    results = _run(engine, tasks, jobs, progress, started, plans)
    for plan in plans:
        chain_results = [results[i] for i in plan.tasks]
        findings, unsealed, head = _merge(plan.chain, chain_results, plan.base_seq, plan.base_finding,
                                          plan.closed_at, plan.head)
        _add(report, plan.chain, chain_results, plan.extra + findings, unsealed, head)
    for chain in sorted(set(heads) - set(present)):
        report.findings.append(Finding("deleted", chain, (), f"the chain verified by the checkpoint of "
                                       f"{checkpoint.when} is gone: records, seals and all"))
    with engine.connect() as conn:  # in full on every run, incremental or not: it reads only seals and heads
        anchored = audit_anchor.database_findings(conn, keys, witness_dir)
    report.findings += anchored.findings
    report.witness = anchored.witness
    return report


def cpus() -> int:
    """CPUs this process may run on (the default number of jobs)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def verify_chain(engine: Engine, chain: str, keys: Mapping[str, str]) -> Report:
    """Verify one chain in full, in this process (a checkpoint's own chain)."""
    tasks: list[Task] = []
    with engine.connect() as conn:
        base = conn.execute(select(audit_chain_bases).where(audit_chain_bases.c.chain == chain)).first()
        plan = _plan_chain(conn, chain, base._asdict() if base else None, keys, _url_of(engine), tasks, SEGMENT, None)
    results = [run_task(t, engine) for t in tasks]
    report = Report()
    findings, unsealed, head = _merge(chain, results, plan.base_seq, plan.base_finding, plan.closed_at)
    _add(report, chain, results, findings, unsealed, head)
    return report


def _run(engine: Engine, tasks: list[Task], jobs: int | None, progress, started: float,
         plans: list[_ChainPlan]) -> list[SegmentResult]:
    """Run the tasks here or in a pool of processes; tell `progress` as records are done."""
    chains = len(plans)
    if jobs is None:
        jobs = cpus() if sum(p.span for p in plans) >= PARALLEL_FROM else 1
    in_memory = engine.url.get_backend_name() == "sqlite" and engine.url.database in (None, "", ":memory:")
    results: list[SegmentResult | None] = [None] * len(tasks)
    chain_of = {i: n for n, plan in enumerate(plans) for i in plan.tasks}
    remaining = [len(p.tasks) for p in plans]
    done = {"records": 0, "told": 0, "chains": sum(1 for r in remaining if r == 0)}

    def tell(force: bool = False) -> None:
        if progress and done["records"] - done["told"] >= (1 if force else PROGRESS_EVERY):
            done["told"] = done["records"]
            progress(Progress(done["records"], done["chains"], chains, time.perf_counter() - started))

    def finished(i: int, result: SegmentResult, counted: bool) -> None:
        results[i] = result
        if not counted:
            done["records"] += result.records
        n = chain_of[i]
        remaining[n] -= 1
        if remaining[n] == 0:
            done["chains"] += 1
        tell()

    if jobs <= 1 or len(tasks) <= 1 or in_memory:
        for i, task in enumerate(tasks):
            def on_rows(n: int) -> None:
                done["records"] += n
                tell()
            before = done["records"]
            result = run_task(task, engine, on_rows)
            done["records"] = before + result.records
            finished(i, result, counted=True)
    else:
        context = multiprocessing.get_context("spawn")  # no connections or threads inherited
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(run_task, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                finished(futures[future], future.result(), counted=False)
    tell(force=True)
    return results  # type: ignore[return-value]


# -- export files -------------------------------------------------------------------------

def _revive(row: dict) -> dict:
    row["at"] = dt.datetime.fromisoformat(row["at"].replace("Z", "+00:00"))
    return row


def verify_file(path: Path, trust_file: Path | None = None, witness_dir: Path | None = None) -> Report:
    """Verify an export (JSON Lines: records, seals, keys and chain bases) offline.

    The keys in the file are not trusted: seals verify with `trust_file` (or the configured
    trust, see lgsp/audit/trust.py). With `witness_dir`, witnessed heads inside the export must match.
    """
    from lgsp.audit import anchor as audit_anchor
    from lgsp.audit import trust as audit_trust

    chains: dict[str, list] = {}
    seals_by_chain: dict[str, list] = {}
    bases: dict[str, Mapping] = {}
    file_keys: dict[str, str] = {}
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
                file_keys[item["kid"]] = item["public_key"]
            elif kind == "base":
                bases[item["chain"]] = item
    keys = audit_trust.trusted_keys(trust_file=trust_file, seen=file_keys)
    report = Report()
    for chain in sorted(set(chains) | set(seals_by_chain)):
        rows = sorted(chains.get(chain, []), key=lambda r: (r["seq"], r["id"]))
        chain_seals = sorted(seals_by_chain.get(chain, []), key=lambda s: s["seq"])
        findings, unsealed, (head, result) = _check_listed(chain, rows, chain_seals, keys, bases.get(chain), False)
        _add(report, chain, [result], findings, unsealed, head)
    if witness_dir is not None:
        report.findings += audit_anchor.file_findings(chains, bases, keys, witness_dir)
    return report
