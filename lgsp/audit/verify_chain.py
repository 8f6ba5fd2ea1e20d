"""Checking one stretch of one chain as a stream: the verifier's per-record work.

A chain is read in seq order and cut into blocks of `BLOCK` seqs. Each record's
hash, seq and link to the record before it are checked as it streams past; the
last three blocks are kept, and only blocks next to a record that fails those
checks are examined for what the failure means (a fork, a reordered record,
…). A record's relations are
therefore looked for among the records of its own block and the blocks either
side: a record moved further than that is still reported, as a broken link or
a deleted/inserted record rather than as `reordered`. Memory is three blocks,
whatever the chain's length. (A repeated seq is reported once: the records
after it are no longer all flagged `inserted`, as the first verifier did.)

A segment is the part of a chain with lo <= seq < hi (None: unbounded). It is
read with one block of context either side so that checking a chain in
segments, in any number of processes, gives exactly the findings of checking it
in one piece.

Rows are tuples that start (seq, prev_hash, hash, id, …); a `Hasher` says, for
a batch of them, whether each record's content still gives its hash (fast), and
for one that does not, what happened to it (exact, as the writer hashed it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

from lgsp.audit import seals
from lgsp.audit.writer import GENESIS, record_hash

_SEQ, _PREV, _H, _ID = 0, 1, 2, 3  # every row starts (seq, prev_hash, hash, id, …)

BLOCK_SHIFT = 11
BLOCK = 1 << BLOCK_SHIFT  # seqs per block (2,048)
_NEVER = 1 << 80


@dataclass(frozen=True)
class Finding:
    kind: str
    chain: str
    record_ids: tuple[int, ...]
    detail: str


@dataclass
class SegmentResult:
    """What one segment contributes to its chain's findings and counts."""
    chain: str
    row_findings: list[Finding] = field(default_factory=list)
    seal_findings: list[Finding] = field(default_factory=list)
    after_close: list[int] = field(default_factory=list)   # records after the shutdown seal
    records: int = 0
    seals: int = 0
    last: tuple[int, int, str] | None = None               # (seq, id, hash) of the last record read
    sealed: tuple[int, str] | None = None                  # highest counted valid seal (seq, head_hash)
    held: int = 0                                          # most records held in memory at once


@dataclass(frozen=True)
class Start:
    """Where a segment's checking starts: what the record before it says, and where the chain starts."""
    expected_seq: int = 1         # the chain's first seq (base + 1)
    prev_hash: str = GENESIS      # hash of the record before the stream
    prev_id: int | None = None
    prev_seq: int | None = None
    base_seq: int | None = None   # the chain's sealed base (retention), if any


class Hasher(Protocol):
    def fast(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """For each row: does its content give its hash? (False may be wrong; True may not.)"""

    def exact(self, row: Sequence[Any]) -> tuple[str, str] | None:
        """None if the record hashes as the writer hashed it, else ("edited" | "renumbered", detail)."""


def record_problem(record: Mapping[str, Any], stored_hash: str) -> tuple[str, str] | None:
    """The writer's hash (record_hash over typed values) checked: None, or what happened to the record."""
    try:
        if record_hash(record) == stored_hash:
            return None
        for delta in (-1, 1, -2, 2, -3, 3):  # renumbered: the hash holds for a neighbouring seq
            seq = record["seq"] + delta
            if seq >= 1 and record_hash(dict(record, seq=seq)) == stored_hash:
                return "renumbered", f"seq changed from {seq} to {record['seq']}"
    except (TypeError, ValueError, AttributeError, OverflowError, KeyError):
        pass  # content the writer cannot have written
    return "edited", "content does not match its hash"


class _Block:
    __slots__ = ("index", "rows", "problems", "anomalous", "state", "done")

    def __init__(self, index: int, state: tuple[int, str, int | None]):
        self.index = index
        self.rows: list = []
        self.problems: dict[int, tuple[str, str]] = {}
        self.anomalous = False
        self.state = state  # (expected_seq, prev_hash, prev_id) before its first row
        self.done = False


class SegmentChecker:
    """Checks the records of one segment as they stream in (`feed`), then its seals (`finish`)."""

    def __init__(self, chain: str, lo: int | None, hi: int | None, start: Start, *,
                 chain_seals: Iterable[Mapping[str, Any]], keys: Mapping[str, str], closed_at: int | None,
                 is_last: bool, hasher: Hasher):
        self.chain, self.lo, self.hi, self.is_last = chain, lo, hi, is_last
        self.base_seq = start.base_seq
        self.result = SegmentResult(chain)
        self._keys = keys
        self._seals = list(chain_seals)
        self._seal_seqs = {s["seq"] for s in self._seals}
        self._at_sealed: dict[int, list[tuple[int, str]]] = {}
        self._closed = _NEVER if closed_at is None else closed_at
        self._hasher = hasher
        self._expected, self._prev_hash, self._prev_id = start.expected_seq, start.prev_hash, start.prev_id
        self._lo = -_NEVER if lo is None else lo
        self._hi = _NEVER if hi is None else hi
        self._blocks: list[_Block] = []
        self._current: _Block | None = None
        self._final_row = None
        self._last_row = None
        if start.prev_seq is not None:
            self.result.last = (start.prev_seq, start.prev_id, start.prev_hash)

    # -- records ---------------------------------------------------------------------------
    def feed(self, rows: Sequence[Sequence[Any]]) -> None:
        """Check a batch of rows (in (seq, id) order); the per-record hot loop."""
        expected, prev_hash, prev_id = self._expected, self._prev_hash, self._prev_id
        block = self._current
        index = block.index if block is not None else None
        lo, hi, closed, seal_seqs = self._lo, self._hi, self._closed, self._seal_seqs
        counted = 0
        for r, hash_ok in zip(rows, self._hasher.fast(rows)):
            seq = r[0]
            if seq >> BLOCK_SHIFT != index:
                if block is not None:
                    self._close_block(block, seq >> BLOCK_SHIFT)
                index = seq >> BLOCK_SHIFT
                block = _Block(index, (expected, prev_hash, prev_id))
                self._current = block
            if not hash_ok:
                problem = self._hasher.exact(r)
                if problem is not None:
                    block.problems[len(block.rows)] = problem
                    block.anomalous = True
            if r[1] != prev_hash or seq != expected:
                block.anomalous = True
            block.rows.append(r)
            prev_hash, prev_id = r[2], r[3]
            if seq >= expected:
                expected = seq + 1
            if lo <= seq < hi:
                counted += 1
                if seq in seal_seqs:
                    self._at_sealed.setdefault(seq, []).append((prev_id, prev_hash))
                if seq > closed:
                    self.result.after_close.append(prev_id)
        if rows:
            last = rows[-1]
            self._last_row = last
            self.result.last = (last[_SEQ], last[_ID], last[_H])
        self.result.records += counted
        self._expected, self._prev_hash, self._prev_id = expected, prev_hash, prev_id

    def _close_block(self, block: _Block, next_index: int) -> None:
        self._blocks.append(block)
        self.result.held = max(self.result.held, sum(len(b.rows) for b in self._blocks))
        for b in self._blocks:
            if not b.done and b.index + 1 < next_index:  # everything that follows it is known
                self._evaluate(b)
        keep_from = min((b.index for b in self._blocks if not b.done), default=next_index) - 1
        self._blocks = [b for b in self._blocks if b.index >= keep_from]

    def _evaluate(self, block: _Block) -> None:
        block.done = True
        first = block.index << BLOCK_SHIFT
        if first >= self._hi or first + BLOCK <= self._lo:
            return  # context: another segment reports on it
        near = {b.index: b for b in self._blocks if abs(b.index - block.index) <= 1}
        if any(b.anomalous for b in near.values()):
            self._examine(block, [near[i] for i in sorted(near)])

    def _examine(self, block: _Block, context_blocks: list[_Block]) -> None:
        """The block's findings, with its neighbours as context (the rare path: something is wrong)."""
        chain = self.chain
        found = self.result.row_findings

        def find(kind: str, ids: Iterable[int], detail: str) -> None:
            found.append(Finding(kind, chain, tuple(ids), detail))

        context = [r for b in context_blocks for r in b.rows]
        offset = 0
        for b in context_blocks:
            if b is block:
                break
            offset += len(b.rows)
        by_hash = {r[_H]: i for i, r in enumerate(context)}
        linked_to = {r[_PREV] for r in context}
        claims: dict[str, list[int]] = {}
        for r in context:
            claims.setdefault(r[_PREV], []).append(r[_ID])
        expected, prev_hash, prev_id = block.state
        lo, hi = self._lo, self._hi
        for k, row in enumerate(block.rows):
            rid, seq, position = row[_ID], row[_SEQ], offset + k
            if not lo <= seq < hi:  # context read for this segment, reported by another
                prev_hash, prev_id, expected = row[_H], rid, max(expected, seq + 1)
                continue
            explained = False
            if seq < expected:
                find("inserted", [rid], f"seq {seq} appears again (or out of order) after seq {expected - 1}")
                explained = True
            elif seq > expected:
                find("deleted", [i for i in (prev_id, rid) if i is not None],
                     f"seq {expected}–{seq - 1} missing between these records")
                explained = True
            problem = block.problems.get(k)
            if problem is not None:
                find(problem[0], [rid], problem[1])
                explained = True
            if row[_H] not in linked_to and len(claims[row[_PREV]]) > 1 and row is not self._final_row:
                others = ", ".join(str(i) for i in claims[row[_PREV]] if i != rid)
                find("inserted", [rid], f"claims the same predecessor as record {others}, and no record follows it")
                explained = True
            if row[_PREV] != prev_hash:
                target = by_hash.get(row[_PREV])
                if target is not None and target > position:
                    find("reordered", [rid, context[target][_ID]],
                         f"links to record {context[target][_ID]}, which comes after it")
                elif not explained:
                    find("broken_link", [rid], "does not link to the record before it")
            prev_hash, prev_id = row[_H], rid
            if seq >= expected:
                expected = seq + 1

    # -- end of the stream: remaining blocks, then the seals ---------------------------------
    def finish(self) -> SegmentResult:
        if self._current is not None:
            self._blocks.append(self._current)
            self._current = None
        if self.is_last and self._last_row is not None:
            self._final_row = self._last_row
        for b in self._blocks:
            if not b.done:
                self._evaluate(b)
        self._blocks = []
        self._check_seals()
        return self.result

    def _check_seals(self) -> None:
        result, chain = self.result, self.chain
        last_seq = result.last[0] if result.last else (self.base_seq or 0)
        for seal in self._seals:
            result.seals += 1
            at_seq = self._at_sealed.get(seal["seq"], [])
            problem = seals.verify(seal, self._keys)
            if problem:
                kind = ("unknown_key" if "unknown key" in problem else "untrusted_key" if "not trusted" in problem
                        else "forged_seal")
                result.seal_findings.append(Finding(kind, chain, tuple(i for i, _ in at_seq),
                                                   f"seal at seq {seal['seq']}: {problem}"))
                continue
            if seal["seq"] == 0 or (self.base_seq is not None and seal["seq"] <= self.base_seq):
                continue
            if self.is_last and seal["seq"] > last_seq:
                result.seal_findings.append(Finding(
                    "truncated", chain, (result.last[1],) if result.last and result.last[1] is not None else (),
                    f"a seal covers seq {seal['seq']}, the chain ends at seq {last_seq}"))
            elif not at_seq or at_seq[-1][1] != seal["head_hash"]:
                result.seal_findings.append(Finding(
                    "seal_mismatch", chain, (at_seq[-1][0],) if at_seq else (),
                    f"the record at seq {seal['seq']} is not the one sealed at {seal['at']}"))
            if result.sealed is None or seal["seq"] >= result.sealed[0]:
                result.sealed = (seal["seq"], seal["head_hash"])


# -- rows that are already Python values (export files, lists) ---------------------------------

class RecordHasher:
    """Rows (seq, prev_hash, hash, id, record dict): the record's own values, hashed as the writer did."""

    def fast(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        return [False] * len(rows)  # exact() decides every row: lists are small

    def exact(self, row: Sequence[Any]) -> tuple[str, str] | None:
        return record_problem(row[4], row[_H])


def check_rows(chain: str, rows: list[Mapping[str, Any]], chain_seals: list[Mapping[str, Any]],
               keys: Mapping[str, str], start: Start, closed_at: int | None) -> SegmentResult:
    """One whole chain held as a list (export files, tests): a single segment."""
    checker = SegmentChecker(chain, None, None, start, chain_seals=chain_seals, keys=keys, closed_at=closed_at,
                             is_last=True, hasher=RecordHasher())
    checker.feed([(r["seq"], r["prev_hash"], r["hash"], r["id"], r) for r in rows])
    return checker.finish()


def closed_at_of(chain_seals: Iterable[Mapping[str, Any]], keys: Mapping[str, str], base_seq: int | None
                 ) -> int | None:
    """The highest seq closed by a valid shutdown seal (records after it do not belong)."""
    closed = None
    for s in chain_seals:
        if s["reason"] != "shutdown" or s["seq"] == 0 or (base_seq is not None and s["seq"] <= base_seq):
            continue
        if seals.verify(s, keys) is None:
            closed = s["seq"] if closed is None else max(closed, s["seq"])
    return closed
