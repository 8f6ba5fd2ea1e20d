"""Read side of the audit trail for security teams: search, one record and its
integrity, the citizen access report. Plain functions over the Engine (Core).

Searches order by (at, id) and stop after one page, so they read one index range:
every filter has a (column, at, id) index that matches both the filter and the
order, and the first filter present in INDEXES names the one to read (the other
filters are checked on its rows). SQLite's planner, without statistics, once
walked every exchange in time order for one citizen's report (issue 15): there
the index is pinned with INDEXED BY, so the plan cannot drift and a query whose
index is gone fails instead of scanning. PostgreSQL has no hints; an index that
matches filter and order is the cheapest path there, as long as the planner's
estimates hold, so the conditions stay plain equalities it can estimate
(wrapping the others, as `col || ''`, made it guess 0.5 % and sort every match
of the leading filter instead). tests/audit/test_audit_plans.py asserts each query's
plan on both databases. On SQLite the id is the rowid, which every index entry
ends with, so (column, at) already is (column, at, id).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from dataclasses import fields as dc_fields
from typing import Any, Mapping

import orjson
from sqlalchemy import Engine, Select, and_, case, func, or_, select

from lgsp.audit import seals
from lgsp.audit.writer import GENESIS, record_hash
from lgsp.crypto import subject_hash
from lgsp.storage.schema import audit_bodies, audit_chain_bases, audit_records, audit_seals, clients

REPORT_MAX = 10_000   # accesses listed in one report; the summary counts them all
WALK_MAX = 100_000    # records walked from a record to its seal on the record page
COUNT_MAX = 10_000    # longest chain whose records the record page counts
UTC = dt.timezone.utc

col = audit_records.c
_JOINED = audit_records.outerjoin(clients, clients.c.client_id == col.client_id)
_COLUMNS = (audit_records, clients.c.name.label("client_name"), clients.c.agency_name.label("agency_name"))


# Filter → the index a search with it walks, most selective first; no filter (or time only): the time index.
INDEXES = (
    ("request_id", "ix_audit_request_id"), ("subject_hash", "ix_audit_subject_at"), ("officer", "ix_audit_officer_at"),
    ("client_id", "ix_audit_client_at"), ("service", "ix_audit_service_at"), ("purpose", "ix_audit_purpose_at"),
    ("outcome", "ix_audit_outcome_at"), ("kind", "ix_audit_kind_at"),
)
TIME_INDEX = "ix_audit_at"
REPORT_INDEX = "ix_audit_subject_at"


def pinned(query: Select, index: str) -> Select:
    """The query reads audit_records through `index` (SQLite: INDEXED BY; elsewhere the query's shape)."""
    return query.with_hint(audit_records, f"INDEXED BY {index}", "sqlite")


class InvalidQuery(ValueError):
    """A search the caller got wrong (bad cursor, bad time): a sentence for a person."""


@dataclass(frozen=True)
class Filters:
    start: dt.datetime | None = None     # at >= start
    end: dt.datetime | None = None       # at < end
    client_id: str | None = None
    officer: str | None = None
    service: str | None = None
    purpose: str | None = None
    outcome: str | None = None
    kind: str | None = None
    subject_hash: str | None = None
    request_id: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Filters":
        """From API/console parameters: `from`/`to` as RFC 3339, `personal_id` → its keyed hash."""
        values = {f.name: params.get(f.name) or None for f in dc_fields(cls) if f.name not in ("start", "end")}
        pid = params.get("personal_id")
        if pid:
            values["subject_hash"] = subject_hash(pid)
        return cls(start=parse_time(params.get("from"), "from"), end=parse_time(params.get("to"), "to"), **values)

    @property
    def index(self) -> str:
        """The index a search with these filters walks."""
        return next((index for name, index in INDEXES if getattr(self, name)), TIME_INDEX)

    def clauses(self) -> list:
        out = [getattr(col, name) == value for name, value in self._equalities().items()]
        if self.start:
            out.append(col.at >= self.start)
        if self.end:
            out.append(col.at < self.end)
        return out

    def _equalities(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in dc_fields(self)
                if f.name not in ("start", "end") and getattr(self, f.name)}


# Years of four digits only: earlier ones are typing errors, and cannot be shifted to UTC near year 1.
MIN_YEAR = 1000
# Record ids are 64-bit signed integers in both databases.
MAX_RECORD_ID = 2**63 - 1


def parse_time(value: str | dt.datetime | None, name: str = "time") -> dt.datetime | None:
    """An aware UTC datetime (bound as UTC on both SQLite and PostgreSQL)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise InvalidQuery(f"'{name}' must be an RFC 3339 date-time such as 2025-07-01T08:00:00+07:00.") from None
    if value.tzinfo is None:
        raise InvalidQuery(f"'{name}' needs a UTC offset (Z or +07:00): local times are ambiguous.")
    if value.year < MIN_YEAR:
        raise InvalidQuery(f"'{name}' is before the year {MIN_YEAR}; no audit record is that old.")
    return value.astimezone(UTC)


def utc(value: dt.datetime) -> dt.datetime:
    """Database datetimes as aware UTC (SQLite hands back naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- search ------------------------------------------------------------------------------

def encode_cursor(at: dt.datetime, record_id: int, order: str) -> str:
    raw = orjson.dumps([iso(at), record_id, order])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, order: str) -> tuple[dt.datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, record_id, cursor_order = orjson.loads(raw)
        if type(record_id) is not int or not 0 <= record_id <= MAX_RECORD_ID:  # an id the database could hold
            raise ValueError(record_id)
        position = (parse_time(at), record_id)
    except (binascii.Error, ValueError, TypeError, InvalidQuery):
        raise InvalidQuery("The cursor is not one this API gave out; start again without it.") from None
    if cursor_order != order or position[0] is None:
        raise InvalidQuery("The cursor belongs to a search in the other order; keep 'order' unchanged when paging.")
    return position


def _after(at: dt.datetime, record_id: int, order: str):
    """Keyset condition: strictly past (at, id) in the page order.

    The plain bound on `at` comes first so both databases start the index range there.
    """
    if order == "asc":
        return and_(col.at >= at, or_(col.at > at, col.id > record_id))
    return and_(col.at <= at, or_(col.at < at, col.id < record_id))


def _ordered(query: Select, order: str) -> Select:
    if order == "asc":
        return query.order_by(col.at.asc(), col.id.asc())
    return query.order_by(col.at.desc(), col.id.desc())


def search(engine: Engine, filters: Filters, limit: int = 50, cursor: str | None = None,
           order: str = "desc") -> tuple[list[dict], str | None]:
    """One page of records matching `filters`, and the cursor of the next page (None: last page)."""
    if order not in ("asc", "desc"):
        raise InvalidQuery("'order' is 'asc' or 'desc'.")
    conditions = filters.clauses()
    if cursor:
        conditions.append(_after(*decode_cursor(cursor, order), order))
    query = search_query(filters, conditions, order).limit(limit + 1)
    with engine.connect() as conn:
        rows = [_plain(row._mapping) for row in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["at"], rows[-1]["id"], order) if more else None
    return rows, next_cursor


def search_query(filters: Filters, conditions: list | None = None, order: str = "desc") -> Select:
    """A search page's query, before its limit."""
    query = select(*_COLUMNS).select_from(_JOINED).where(*(filters.clauses() if conditions is None else conditions))
    return _ordered(pinned(query, filters.index), order)


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a dict with plain str keys (SQLAlchemy's quoted names trip strict JSON encoders)."""
    return {str(k): v for k, v in row.items()}


def hash_ok(row: Mapping[str, Any]) -> bool:
    return record_hash(row) == row["hash"]


def to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record for the API: UTC times, its hash checked."""
    out = {k: v for k, v in row.items()}
    out["at"] = iso(row["at"])
    out["hash_ok"] = hash_ok(row)
    return out


# -- one record ------------------------------------------------------------------------------

def get_record(engine: Engine, record_id: int) -> dict | None:
    """The record (with client name) and its integrity, or None."""
    if not 1 <= record_id <= MAX_RECORD_ID:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).select_from(_JOINED).where(col.id == record_id)).first()
        if row is None:
            return None
        record = _plain(row._mapping)
        record["body_stored"] = conn.execute(select(audit_bodies.c.id).where(
            audit_bodies.c.chain == record["chain"], audit_bodies.c.seq == record["seq"]).limit(1)).first() is not None
        record["integrity"] = _integrity(conn, record)
        record["chain_status"] = _chain_status(conn, record["chain"])
    return record


def _integrity(conn, row: dict) -> dict:
    """What can be checked about one record on the spot (the full check is `lgsp audit verify`).

    `tampered`: the record fails its own checks (its hash, its links). `unproven`: it
    passes them, but the seal that should prove it does not hold (a record between
    them fails, or the seal's signature does).
    """
    own: list[str] = []
    ok = hash_ok(row)
    if not ok:
        own.append("The record's content does not match its hash: it was changed after it was written.")
    linked = _linked_backwards(conn, row, own)
    _linked_forwards(conn, row, own)
    seal = _covering_seal(conn, row)
    proof = _walk_to_seal(conn, row, seal) if seal is not None and not own else []
    if own:
        status = "tampered"
    elif proof:
        status = "unproven"
    else:
        status = "sealed" if seal else "unsealed"
    return {"status": status, "hash_ok": ok, "linked": linked, "seal": seal, "findings": own + proof}


def _chain_row(conn, chain: str, seq: int):
    return conn.execute(select(col.id, col.hash, col.prev_hash).where(col.chain == chain, col.seq == seq)).first()


def _linked_backwards(conn, row: dict, findings: list[str]) -> bool | None:
    seq = row["seq"]
    if seq == 1:
        expected = GENESIS
    else:
        prev = _chain_row(conn, row["chain"], seq - 1)
        if prev is None:
            base = conn.execute(select(audit_chain_bases).where(audit_chain_bases.c.chain == row["chain"])).first()
            if base is None or base.base_seq != seq - 1:
                findings.append(f"The record before it in its chain (seq {seq - 1}) is missing.")
                return False
            expected = base.base_hash  # the record before was archived by retention
        else:
            expected = prev.hash
    if row["prev_hash"] != expected:
        findings.append("The record does not link to the record before it in its chain.")
        return False
    return True


def _linked_forwards(conn, row: dict, findings: list[str]) -> None:
    nxt = _chain_row(conn, row["chain"], row["seq"] + 1)
    if nxt is not None and nxt.prev_hash != row["hash"]:
        findings.append(f"The next record in its chain (id {nxt.id}) does not link to this one's hash.")


def _covering_seal(conn, row: dict) -> dict | None:
    s = audit_seals.c
    seal = conn.execute(
        select(audit_seals).where(s.chain == row["chain"], s.seq >= row["seq"]).order_by(s.seq, s.id).limit(1)
    ).first()
    if seal is None:
        return None
    seal = dict(seal._mapping)
    problem = seals.verify(seal, seals.public_keys(conn.engine))
    return {"id": seal["id"], "seq": seal["seq"], "at": iso(seal["at"]), "kid": seal["kid"], "reason": seal["reason"],
            "head_hash": seal["head_hash"], "signature_ok": problem is None, "problem": problem}


def _walk_to_seal(conn, row: dict, seal: dict) -> list[str]:
    """The records from this one to the seal must hash, one into the next, up to the sealed head."""
    if seal["problem"]:
        return [f"The seal that covers it (id {seal['id']}) does not hold: {seal['problem']}."]
    if seal["seq"] - row["seq"] > WALK_MAX:
        return []
    rows = conn.execute(select(audit_records).where(
        col.chain == row["chain"], col.seq > row["seq"], col.seq <= seal["seq"]).order_by(col.seq, col.id)).all()
    prev_hash, expected = row["hash"], row["seq"] + 1
    for other in rows:
        other = other._mapping
        if other["seq"] != expected:
            return [f"Between it and its seal, the record at seq {expected} is missing."]
        if other["prev_hash"] != prev_hash or not hash_ok(other):
            return [f"Between it and its seal, record {other['id']} (seq {other['seq']}) does not verify."]
        prev_hash, expected = other["hash"], expected + 1
    if expected <= seal["seq"]:
        return [f"The chain ends at seq {expected - 1}, before the seal at seq {seal['seq']}: records were removed."]
    if prev_hash != seal["head_hash"]:
        return [f"The chain from this record does not lead to the head sealed at seq {seal['seq']}: "
                "records were rewritten with recomputed hashes."]
    return []


def _chain_status(conn, chain: str) -> dict:
    """Cheap facts about the record's chain: its span, its last seal, records after it.

    First and last seq are one index probe each. Counting the records (to show gaps)
    reads the chain's index range, so it is done for chains up to COUNT_MAX seqs long
    only (a chain lives as long as its process: it can hold tens of millions); beyond,
    `records` and `gaps` are None and `lgsp audit verify` is the check.
    """
    first = conn.execute(select(func.min(col.seq)).where(col.chain == chain)).scalar()
    last = conn.execute(select(func.max(col.seq)).where(col.chain == chain)).scalar()
    if first is not None and last - first < COUNT_MAX:
        count = conn.execute(select(func.count()).where(col.chain == chain)).scalar()
    else:
        count = None if first is not None else 0
    stats = (count, first, last)
    last_seal = conn.execute(select(audit_seals).where(audit_seals.c.chain == chain)
                             .order_by(audit_seals.c.seq.desc(), audit_seals.c.id.desc()).limit(1)).first()
    sealed_seq = last_seal.seq if last_seal else 0
    return {
        "chain": chain, "records": stats[0], "first_seq": stats[1], "last_seq": stats[2],
        "gaps": (stats[2] - stats[1] + 1 - stats[0]) if stats[0] else (None if stats[0] is None else 0),
        "last_seal": {"seq": last_seal.seq, "at": iso(last_seal.at), "reason": last_seal.reason} if last_seal else None,
        "unsealed": max(0, (stats[2] or 0) - sealed_seq),
        "closed": bool(last_seal and last_seal.reason == "shutdown"),
    }


# -- citizen access report ---------------------------------------------------------------

_ACCESS_COLUMNS = (col.id, col.at, col.client_id, clients.c.name.label("client_name"), col.agency_code,
                   clients.c.agency_name.label("agency_name"), col.officer, col.purpose, col.service, col.outcome,
                   col.error_code, col.fields, col.request_id)


def access_report(engine: Engine, personal_id: str, start: dt.datetime | None = None,
                  end: dt.datetime | None = None) -> dict[str, Any]:
    """Every exchange about one citizen, oldest first, and a summary by client.

    Reads only the (subject_hash, at, id) index range of this citizen's keyed hash:
    its cost grows with the citizen's accesses, not with the trail.
    """
    where = report_filters(personal_id, start, end).clauses()
    with engine.connect() as conn:
        rows = conn.execute(report_query(where).limit(REPORT_MAX + 1)).all()
        truncated = len(rows) > REPORT_MAX
        rows = rows[:REPORT_MAX]
        by_client = _summary_sql(conn, where) if truncated else _summary_rows(rows)
    accesses = [_access(row._mapping) for row in rows]
    return {
        "personal_id": personal_id,
        "generated_at": iso(dt.datetime.now(UTC)),
        "from": iso(start), "to": iso(end),
        "summary": {
            "count": sum(c["count"] for c in by_client),
            "answered": sum(c["answered"] for c in by_client),
            "first": min((c["first"] for c in by_client), default=None),
            "last": max((c["last"] for c in by_client), default=None),
            "by_client": by_client,
        },
        "accesses": accesses,
        "truncated": truncated,
    }


def report_filters(personal_id: str, start: dt.datetime | None = None, end: dt.datetime | None = None) -> Filters:
    return Filters(start=start, end=end, kind="exchange", subject_hash=subject_hash(personal_id))


def report_query(where: list) -> Select:
    """The report's rows, oldest first, before its limit."""
    return pinned(select(*_ACCESS_COLUMNS).select_from(_JOINED).where(*where), REPORT_INDEX).order_by(col.at, col.id)


def _access(row: Mapping[str, Any]) -> dict[str, Any]:
    out = _plain(row)
    out["at"] = iso(row["at"])
    out["fields"] = row["fields"] or []
    return out


def _summary_rows(rows) -> list[dict]:
    groups: dict[Any, dict] = {}
    for row in rows:
        g = groups.setdefault(row.client_id, {
            "client_id": row.client_id, "client_name": row.client_name, "agency_code": row.agency_code,
            "agency_name": row.agency_name, "count": 0, "answered": 0, "first": iso(row.at), "last": None})
        g["count"] += 1
        g["answered"] += row.outcome == "ok"
        g["last"] = iso(row.at)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["client_id"] or ""))


def summary_query(where: list) -> Select:
    """Per client, over all of a citizen's accesses (for a report too long to list)."""
    answered = func.sum(case((col.outcome == "ok", 1), else_=0))
    return pinned(select(col.client_id, func.max(clients.c.name), func.max(col.agency_code),
                         func.max(clients.c.agency_name), func.count(), answered, func.min(col.at), func.max(col.at))
                  .select_from(_JOINED).where(*where).group_by(col.client_id), REPORT_INDEX)


def _summary_sql(conn, where: list) -> list[dict]:
    query = summary_query(where)
    groups = [{"client_id": c, "client_name": n, "agency_code": ac, "agency_name": an, "count": k,
               "answered": int(ok or 0), "first": iso(first), "last": iso(last)}
              for c, n, ac, an, k, ok, first, last in conn.execute(query)]
    return sorted(groups, key=lambda g: (-g["count"], g["client_id"] or ""))
