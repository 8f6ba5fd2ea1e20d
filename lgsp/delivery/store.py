"""The durable queue: messages, their dedupe keys and the delivery log, claimed with row locks.

Claiming takes the oldest due messages that head their key (no earlier message of the same key
is still pending) and marks them `delivering` with a lease, in one transaction:
- PostgreSQL: `SELECT … FOR UPDATE OF m SKIP LOCKED`, so workers on any node share the queue
  without waiting on, or taking, each other's rows;
- SQLite: one writer at a time (`BEGIN IMMEDIATE`, under the same file lock as the audit writer),
  so a claim is never made on a stale snapshot.
The delivery log has one row per attempt, written when the attempt finishes (with the attempt's
audit record), not a row at its start finished later: one statement per attempt, not two. A claim
whose lease ran out (its worker was killed) is due again; the lost attempt is logged `abandoned`
when the message is taken again, and a late finish of that attempt (its worker was only slow)
writes its real outcome over that row.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import Counter
from sqlalchemy import BindParameter, ColumnElement, Engine, Select, and_, bindparam, exists, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from lgsp.audit.writer import _FileLock
from lgsp.crypto import derive_key, fernet
from lgsp.storage.schema import PENDING_SQL, delivery_attempts, delivery_dedupe, delivery_messages

M = delivery_messages
claims = Counter("lgsp_delivery_claims", "Claim transactions of the delivery queue, by whether they took a message",
                 ["taken"])
claimed = Counter("lgsp_delivery_claimed", "Messages taken by claims (with lgsp_delivery_claims: messages per claim)")
PENDING = ("accepted", "delivering", "failed")
FINAL = ("delivered", "dead", "cancelled")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


@cache
def _cipher() -> Fernet:
    return fernet()


@cache
def _aead() -> AESGCM:
    return AESGCM(derive_key("lgsp/delivery-payload"))


SEALED = "g1."  # AES-256-GCM (its own derived key); a payload without it is a Fernet token of before


def seal_payload(params: dict[str, Any]) -> str:
    """A message's params at rest: they name people (applicants), so they are kept encrypted. AES-GCM
    with a random 96-bit nonce in one call: Fernet (a cipher, padder and HMAC object per message) was
    8 % of a gateway worker's CPU under acceptance load."""
    nonce = os.urandom(12)
    return SEALED + base64.urlsafe_b64encode(nonce + _aead().encrypt(nonce, orjson.dumps(params), None)).decode()


def open_payload(text: str) -> dict[str, Any]:
    if text.startswith(SEALED):
        raw = base64.urlsafe_b64decode(text[len(SEALED):])
        plain = _aead().decrypt(raw[:12], raw[12:], None)
    else:
        plain = _cipher().decrypt(text.encode())
    params: dict[str, Any] = orjson.loads(plain)
    return params


def store_statements(message: dict[str, Any], client_id: str, dedupe_keys: list[str]) -> list[tuple]:
    """The rows of an accepted message, inserted with its audit record (lgsp.audit.writer StoreConflict
    if a dedupe key is already taken: the same message accepted twice at once)."""
    out = [(delivery_dedupe, {"client_id": client_id, "dedupe_key": key, "message_id": message["id"]})
           for key in dedupe_keys]
    out.append((M, message))
    return out


def first_acceptance(engine: Engine, client_id: str, dedupe_keys: list[str]) -> Any | None:
    """The message a client already had accepted under one of these keys, if any."""
    if not dedupe_keys:
        return None
    with engine.connect() as conn:
        message_id = conn.execute(select(delivery_dedupe.c.message_id).where(
            delivery_dedupe.c.client_id == client_id, delivery_dedupe.c.dedupe_key.in_(dedupe_keys)).limit(1)).scalar()
        if message_id is None:
            return None
        return conn.execute(select(M).where(M.c.id == message_id)).first()


def read(engine: Engine, message_id: str) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(select(M).where(M.c.id == message_id)).first()


def attempts_of(engine: Engine, message_id: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(delivery_attempts).where(delivery_attempts.c.message_id == message_id)
                            .order_by(delivery_attempts.c.attempt))
        return [dict(r._mapping) for r in rows]


@dataclass(frozen=True)
class Claim:
    """A message taken for one attempt."""

    id: str
    seq: int
    client_id: str
    service: str
    destination: str
    operation: str
    msg_key: str
    request_id: str
    purpose: str | None
    officer: str | None
    agency_code: str | None
    payload: str
    attempt: int
    accepted_at: dt.datetime
    expires_at: dt.datetime
    callback_url: str | None
    claimed_at: dt.datetime


_CLAIM_COLUMNS = (M.c.seq, M.c.id, M.c.client_id, M.c.service, M.c.destination, M.c.operation, M.c.msg_key,
                  M.c.request_id, M.c.purpose, M.c.officer, M.c.agency_code, M.c.payload, M.c.attempts,
                  M.c.accepted_at, M.c.expires_at, M.c.callback_url, M.c.status, M.c.lease_owner,
                  M.c.lease_until)


def _due_messages() -> ColumnElement[bool]:
    """The messages due at :at, each the head of its key. Built once: a statement built per look at the
    queue (every LGSP_DELIVERY_POLL seconds, in every worker) left its alias and subquery's reference
    cycles to the garbage collector, and cost its construction and cache key each time."""
    at: BindParameter[dt.datetime] = bindparam("at")
    earlier = M.alias("earlier")
    head_of_key = ~exists().where(earlier.c.msg_key == M.c.msg_key, earlier.c.seq < M.c.seq,
                                  earlier.c.status.in_(PENDING))
    return and_(
        text(f"{M.name}.{PENDING_SQL}"),  # the partial index's own term: SQLite uses it only if it is in the query
        or_(and_(M.c.status.in_(("accepted", "failed")), M.c.next_attempt_at <= at),
            and_(M.c.status == "delivering", M.c.lease_until < at)),
        head_of_key,
    )


_DUE = _due_messages()
_NOT_EXCLUDED = M.c.destination.not_in(bindparam("exclude", expanding=True))


@cache
def _look(exclude: bool) -> Select[Any]:
    query = select(M.c.seq).where(_DUE).limit(1)
    return query.where(_NOT_EXCLUDED) if exclude else query


@cache
def _claim_query(exclude: bool, lock_rows: bool) -> Select[Any]:
    query = select(*_CLAIM_COLUMNS).where(_DUE).order_by(M.c.seq).limit(bindparam("limit"))
    if exclude:
        query = query.where(_NOT_EXCLUDED)
    return query.with_for_update(skip_locked=True, of=M) if lock_rows else query


def _due_params(at: dt.datetime, exclude: Sequence[str]) -> dict[str, Any]:
    """The parameters of _look and _claim_query: the time, and the destinations left out if any."""
    return {"at": at, "exclude": list(exclude)} if exclude else {"at": at}


class Queue:
    """The queue as one worker process uses it."""

    def __init__(self, engine: Engine, worker: str):
        self.engine = engine
        self.worker = worker
        self.sqlite = engine.url.get_backend_name() == "sqlite"
        database = engine.url.database if self.sqlite else None
        # The audit writer's file lock (its own descriptor): SQLite's one writer, handed over at once.
        self._file_lock = _FileLock(database + ".write-lock") if database and database != ":memory:" else None
        self._thread_lock = threading.Lock()
        self._took = False  # the last claim took messages: under a steady load the next will find some too
        self._attempt_insert = (sqlite_insert if self.sqlite else pg_insert)(delivery_attempts)
        # The attempt's row at its finish; over the `abandoned` row of a lease taken meanwhile.
        self._finish_attempt = self._attempt_insert.on_conflict_do_update(
            index_elements=["message_id", "attempt"],
            set_={c: getattr(self._attempt_insert.excluded, c) for c in _ATTEMPT_OUTCOME})

    def claim(self, limit: int, lease: float, exclude: Sequence[str] = ()) -> list[Claim]:
        """Up to `limit` due messages, each the head of its key, leased to this worker (none for the
        destinations in `exclude`)."""
        with self._thread_lock:
            if self.sqlite and not self._took and not self._any_due(exclude):
                # Nothing due: found without SQLite's one write lock (a WAL read), which the gateway's
                # acceptances would otherwise wait for at every empty look at the queue. Not looked
                # first after a claim that took messages (the look was then a second query per claim,
                # 9 % of a worker beside the acceptance load): at worst one claim finds the queue empty.
                claims.labels("no").inc()
                return []
            if self._file_lock is None:
                taken = self._claim(limit, lease, exclude)
            else:
                with self._file_lock:
                    taken = self._claim(limit, lease, exclude)
            self._took = bool(taken)
        claims.labels("yes" if taken else "no").inc()
        claimed.inc(len(taken))
        return taken

    def _any_due(self, exclude: Sequence[str]) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(_look(bool(exclude)), _due_params(now(), exclude)).first() is not None

    def _claim(self, limit: int, lease: float, exclude: Sequence[str]) -> list[Claim]:
        at = now()
        with self.engine.connect() as conn:
            if self.sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            rows = conn.execute(_claim_query(bool(exclude), not self.sqlite),
                                {**_due_params(at, exclude), "limit": limit}).all()
            if not rows:
                conn.rollback()
                return []
            until = at + dt.timedelta(seconds=lease)
            # One UPDATE for the whole batch: its rows are locked (FOR UPDATE / BEGIN IMMEDIATE), so
            # `attempts + 1` is each one's count read above. An executemany of one UPDATE per row was,
            # on PostgreSQL, a pipelined statement per message: a fifth of the claim's CPU.
            conn.execute(_CLAIM_MESSAGES, {"seqs": [r.seq for r in rows], "lease_owner": self.worker,
                                           "lease_until": until})
            # Their worker was lost mid-attempt: the attempt is logged (its start is the lease's, less a lease).
            lost = [{"message_id": r.id, "attempt": r.attempts, "worker": r.lease_owner or "?",
                     "started_at": (utc(r.lease_until) or at) - dt.timedelta(seconds=lease), "finished_at": at,
                     "outcome": "abandoned", "reason": ABANDONED} for r in rows if r.status == "delivering"]
            if lost:
                conn.execute(self._attempt_insert.on_conflict_do_nothing(), lost)  # a late finish came first
            conn.commit()
        return [Claim(id=r.id, seq=r.seq, client_id=r.client_id, service=r.service, destination=r.destination,
                      operation=r.operation, msg_key=r.msg_key, request_id=r.request_id, purpose=r.purpose,
                      officer=r.officer, agency_code=r.agency_code, payload=r.payload, attempt=r.attempts + 1,
                      accepted_at=utc(r.accepted_at), expires_at=utc(r.expires_at), callback_url=r.callback_url,
                      claimed_at=at)
                for r in rows]

    def retry_now(self, destination: str) -> None:
        """The destination is back: its waiting messages are due now, not at the end of their backoff."""
        with self._thread_lock, self._file_lock or contextlib.nullcontext(), self.engine.begin() as conn:
            conn.execute(update(M).where(M.c.destination == destination, M.c.status == "failed")
                         .values(next_attempt_at=now()))

    def finish_statements(self, claim: Claim, *, status: str, error_code: str | None = None,
                          reason: str | None = None, answer: Any = None, next_attempt_at: dt.datetime | None = None,
                          latency_ms: float | None = None) -> list[tuple]:
        """The message's new state and its attempt's outcome, committed with the attempt's audit
        record. Only while this worker still holds the claim: a lease taken over is not overwritten."""
        at = now()
        final = status in FINAL
        message = {"b_seq": claim.seq, "b_owner": self.worker, "b_attempt": claim.attempt, "status": status,
                   "error_code": error_code, "reason": reason, "answer": answer,
                   "finished_at": at if final else None, "next_attempt_at": next_attempt_at or at,
                   "callback_state": "pending" if final and claim.callback_url else None}
        attempt = {"message_id": claim.id, "attempt": claim.attempt, "worker": self.worker,
                   "started_at": claim.claimed_at, "finished_at": at,
                   "outcome": {"delivered": "delivered", "dead": "dead", "failed": "retry"}[status],
                   "error_code": error_code, "reason": reason, "latency_ms": latency_ms}
        return [(_FINISH_MESSAGE, message), (self._finish_attempt, attempt)]


_CLAIM_MESSAGES = update(M).where(M.c.seq.in_(bindparam("seqs", expanding=True))).values(
    status="delivering", attempts=M.c.attempts + 1, lease_owner=bindparam("lease_owner"),
    lease_until=bindparam("lease_until"))
ABANDONED = "The worker's lease ran out (worker stopped?)."
_ATTEMPT_OUTCOME = ("worker", "started_at", "finished_at", "outcome", "error_code", "reason", "latency_ms")

# Prepared once: the audit writer runs a group's finishes as one executemany each.
_FINISH_MESSAGE = update(M).where(
    M.c.seq == bindparam("b_seq"), M.c.lease_owner == bindparam("b_owner"),
    M.c.attempts == bindparam("b_attempt"), M.c.status == "delivering",
).values(status=bindparam("status"), error_code=bindparam("error_code"), reason=bindparam("reason"),
         answer=bindparam("answer", type_=M.c.answer.type), finished_at=bindparam("finished_at"),
         next_attempt_at=bindparam("next_attempt_at"), callback_state=bindparam("callback_state"),
         callback_attempts=0, callback_next_at=None, lease_owner=None, lease_until=None)
