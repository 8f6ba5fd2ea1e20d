"""Reading chains out of the database for the verifier, fast and in parallel.

Each chain is cut into segments of `SEGMENT` seqs; each segment is one task,
checked by `run_task` in this process or in a pool of worker processes (spawned,
so no database connection or thread is shared with the parent). A task reads
its rows with a raw DBAPI cursor, only the columns the hash covers: SQLite
builds the record's canonical JSON itself (one SHA-256 per record in Python),
PostgreSQL builds it around the two JSON columns, which Python re-encodes
with orjson. Anything that does not hash that way is checked again exactly as
the writer hashed it (`record_problem`), so the fast path changes the speed,
never the result.

Each task reads in one snapshot: its seals first, then its records, so a seal
written meanwhile by a running gateway never covers records the task did not see.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import orjson
from sqlalchemy import Connection, Engine, and_, select, text

from lgsp.audit.verify_chain import BLOCK, SegmentChecker, SegmentResult, Start, record_problem
from lgsp.audit.writer import HASHED_FIELDS
from lgsp.storage.schema import audit_records, audit_seals

SEGMENT = 1 << 18   # seqs per task (262,144; a multiple of BLOCK)
FETCH = 4096        # rows per fetchmany

# SQLite builds the whole canonical JSON that record_hash hashes (same compact form as orjson for
# what the writer stores); `at` only when stored exactly as SQLAlchemy writes it, JSON columns only
# when valid. Anything else gives other bytes, and the record is then hashed the exact way.
_AT_SQLITE = ("CASE WHEN length(at) = 26 AND substr(at, 11, 1) = ' ' "
              "THEN substr(at, 1, 10) || 'T' || substr(at, 12) || 'Z' END")
# PostgreSQL's JSON output has spaces, so it builds the canonical text around the two JSON
# columns, which Python re-encodes with orjson (their stored text is json.dumps's).
_PG_INTEGERS = ("seq", "status", "request_bytes", "response_bytes")


def _pg_scalar(name: str) -> str:
    if name == "at":
        return "to_json(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text"
    if name in _PG_INTEGERS:
        return f"coalesce({name}::text, 'null')"
    if name == "latency_ms":  # orjson writes 3.0 where PostgreSQL writes 3
        return ("coalesce(CASE WHEN latency_ms = trunc(latency_ms) AND abs(latency_ms) < 1e15 "
                "THEN trunc(latency_ms)::bigint::text || '.0' ELSE to_json(latency_ms)::text END, 'null')")
    return f"coalesce(to_json({name})::text, 'null')"


def _row_sql(dialect: str, bounded_below: bool, bounded_above: bool) -> str:
    """Rows (seq, prev_hash, hash, id, …what the dialect's hasher needs) of one chain, in seq order."""
    if dialect == "postgresql":
        i, j = HASHED_FIELDS.index("fields"), HASHED_FIELDS.index("detail")
        head = " || ',' || ".join(_pg_scalar(f) for f in HASHED_FIELDS[:i])
        mid = " || ',' || ".join(_pg_scalar(f) for f in HASHED_FIELDS[i + 1:j])
        assert j == len(HASHED_FIELDS) - 1  # detail closes the array
        columns = [f"'[' || {head} || ','", "fields::text", f"',' || {mid} || ','", "detail::text"]
    else:
        parts = [_AT_SQLITE if f == "at" else f"CASE WHEN json_valid({f}) THEN json({f}) END"
                 if f in ("fields", "detail") else f for f in HASHED_FIELDS]
        columns = [f"json_array({', '.join(parts)})"]
    where = ["chain = :chain"]
    if bounded_below:
        where.append("seq >= :lo")
    if bounded_above:
        where.append("seq < :hi")
    return (f"SELECT seq, prev_hash, hash, id, {', '.join(columns)} FROM audit_records "
            f"WHERE {' AND '.join(where)} ORDER BY seq, id")


class _Refetch:
    """The exact check: the record read again through SQLAlchemy, hashed as the writer hashed it."""

    def __init__(self, conn: Connection, chain: str):
        self.conn, self.chain = conn, chain

    def exact(self, row: Sequence[Any]) -> tuple[str, str] | None:
        c = audit_records.c
        record = self.conn.execute(select(audit_records).where(
            c.chain == self.chain, c.seq == row[0], c.id == row[3], c.hash == row[2])).first()
        if record is None:
            return "edited", "content does not match its hash"
        return record_problem(record._asdict(), row[2])


class SqliteHasher(_Refetch):
    """Rows (seq, prev_hash, hash, id, canonical JSON text): one SHA-256 per record."""

    def fast(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        sha = hashlib.sha256
        return [sha(r[4].encode()).hexdigest() == r[2] for r in rows]


class PostgresHasher(_Refetch):
    """Rows (seq, prev_hash, hash, id, text before `fields`, fields, text between, detail)."""

    def fast(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        sha, dumps, loads = hashlib.sha256, orjson.dumps, orjson.loads
        out = []
        for r in rows:
            try:
                fields, detail = r[5], r[7]
                canon = b"".join((r[4].encode(), b"null" if fields is None else dumps(loads(fields)), r[6].encode(),
                                  b"null" if detail is None else dumps(loads(detail)), b"]"))
                out.append(sha(canon).hexdigest() == r[2])
            except (ValueError, TypeError, AttributeError):
                out.append(False)
        return out


@dataclass(frozen=True)
class Task:
    """One segment of one chain: records with lo <= seq < hi, read from `read_from` (context)."""
    url: str
    chain: str
    lo: int | None
    hi: int | None
    read_from: int | None
    chain_start: Start                 # how the chain starts (base or genesis)
    closed_at: int | None
    keys: Mapping[str, str]
    is_last: bool
    start: Start | None = None         # given (a checkpoint head); else read from the database


def _begin_snapshot(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN")  # pysqlite would not start a read transaction by itself
    else:
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))


def _raw_rows(conn: Connection, chain: str, lo: int | None, hi: int | None) -> Iterator[list]:
    """Batches of rows, streamed (server-side cursor on PostgreSQL)."""
    dialect = conn.dialect.name
    sql = _row_sql(dialect, lo is not None, hi is not None)
    params: dict[str, Any] = {"chain": chain}
    if lo is not None:
        params["lo"] = lo
    if hi is not None:
        params["hi"] = hi
    driver = conn.connection.driver_connection
    if dialect == "postgresql":
        cur = driver.cursor(name=f"lgsp_verify_{secrets.token_hex(4)}")
        cur.itersize = FETCH
        sql = sql.replace(":chain", "%(chain)s").replace(":lo", "%(lo)s").replace(":hi", "%(hi)s")
    else:
        cur = driver.cursor()
    try:
        cur.execute(sql, params)
        while batch := cur.fetchmany(FETCH):
            yield batch
    finally:
        cur.close()


def _prev_row(conn: Connection, chain: str, before: int):
    c = audit_records.c
    return conn.execute(select(c.id, c.seq, c.hash).where(c.chain == chain, c.seq < before)
                        .order_by(c.seq.desc(), c.id.desc()).limit(1)).first()


def _seals(conn: Connection, chain: str, lo: int | None, hi: int | None) -> list[dict]:
    s = audit_seals.c
    where = [s.chain == chain]
    if lo is not None:
        where.append(s.seq >= lo)
    if hi is not None:
        where.append(s.seq < hi)
    query = select(s.chain, s.seq, s.head_hash, s.at, s.kid, s.signature, s.reason).where(and_(*where))
    return [r._asdict() for r in conn.execute(query.order_by(s.seq, s.id))]


def run_task(task: Task, engine: Engine | None = None, on_rows: Callable[[int], None] | None = None
             ) -> SegmentResult:
    """Check one segment (in a worker process, or here when `engine` is given)."""
    if engine is None:
        from lgsp.storage import engine_for

        engine = engine_for(task.url)
    with engine.connect() as conn:
        _begin_snapshot(conn)
        start = task.start or _start_of(conn, task)
        hasher = (PostgresHasher if conn.dialect.name == "postgresql" else SqliteHasher)(conn, task.chain)
        checker = SegmentChecker(task.chain, task.lo, task.hi, start,
                                 chain_seals=_seals(conn, task.chain, task.lo, task.hi), keys=task.keys,
                                 closed_at=task.closed_at, is_last=task.is_last, hasher=hasher)
        for batch in _raw_rows(conn, task.chain, task.read_from, None if task.is_last else _context_end(task)):
            checker.feed(batch)
            if on_rows is not None:
                on_rows(len(batch))
        conn.rollback()
    return checker.finish()


def _context_end(task: Task) -> int | None:
    return None if task.hi is None else task.hi + BLOCK


def _start_of(conn: Connection, task: Task) -> Start:
    """The state before the first row read: from the record just before it, or the chain's start."""
    first = task.chain_start
    if task.read_from is None:
        return first
    prev = _prev_row(conn, task.chain, task.read_from)
    if prev is None:
        return first
    return Start(expected_seq=max(first.expected_seq, prev.seq + 1), prev_hash=prev.hash, prev_id=prev.id,
                 prev_seq=prev.seq, base_seq=first.base_seq)


def segments(lo: int, hi: int, first_lo: int | None, *, size: int = SEGMENT) -> list[tuple[int | None, int | None]]:
    """Cut seqs lo..hi (inclusive) at multiples of `size`: [(first_lo, c1), (c1, c2), …, (ck, None)]."""
    cuts = list(range((lo // size + 1) * size, hi + 1, size)) if hi >= lo else []
    bounds = [first_lo, *cuts, None]
    return list(zip(bounds[:-1], bounds[1:]))


def chains_in(conn: Connection) -> list[str]:
    """Every chain with records, seals or a base, each found through an index (no full scan)."""
    found: set[str] = set()
    for table in ("audit_records", "audit_seals"):
        sql = (f"WITH RECURSIVE c(chain) AS (SELECT min(chain) FROM {table} UNION ALL "
               f"SELECT (SELECT min(t.chain) FROM {table} t WHERE t.chain > c.chain) FROM c WHERE c.chain IS NOT NULL) "
               "SELECT chain FROM c WHERE chain IS NOT NULL")
        found.update(r[0] for r in conn.execute(text(sql)))
    found.update(r[0] for r in conn.execute(text("SELECT chain FROM audit_chain_bases")))
    return sorted(found)


def seq_range(conn: Connection, chain: str) -> tuple[int, int] | None:
    c = audit_records.c
    low = conn.execute(select(c.seq).where(c.chain == chain).order_by(c.seq).limit(1)).scalar()
    if low is None:
        return None
    high = conn.execute(select(c.seq).where(c.chain == chain).order_by(c.seq.desc()).limit(1)).scalar()
    return low, high
