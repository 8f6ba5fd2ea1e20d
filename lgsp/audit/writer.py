"""Audit records: one per exchange, hash-chained, committed before the answer leaves.

Each gateway process writes its own chain (so replicas never share a lock).
Records are written by one thread per process in groups: every waiting record
is inserted in the same transaction (group commit), and each exchange waits
until the transaction holding *its* record is durable. If that fails, the
exchange fails closed with `audit.unavailable`.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Required, TypedDict

import orjson
from sqlalchemy import JSON, Connection, Engine, Executable, Insert, Table, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from lgsp import metrics
from lgsp.audit import seals, syslog, witness
from lgsp.config import settings
from lgsp.storage import checkpoints, maintenance
from lgsp.storage.schema import audit_bodies, audit_records, audit_seals

log = logging.getLogger(__name__)

GENESIS = "0" * 64
# The writer's own connection is checked (one round trip) before use only after this long unused.
IDLE_PING_SECONDS = 30.0
# Key of an encrypted payload handed to the writer with a record; stored apart, not hashed.
BODY = "_body"

# The columns covered by a record's hash, in a fixed order: the verifier
# recomputes exactly this. Adding a column means adding it here, at the end.
HASHED_FIELDS = (
    "chain", "seq", "prev_hash", "at", "kind", "request_id", "door", "client_id", "agency_code",
    "officer", "purpose", "service", "outcome", "status", "error_code", "latency_ms", "fields",
    "subject_hash", "upstream", "trace_id", "request_bytes", "response_bytes", "response_sha256", "detail",
)


# The columns the writer itself fills in (the chain's position); every other hashed column comes
# from the record it is handed.
WRITER_FIELDS = HASHED_FIELDS[:3]


class AuditRecord(TypedDict, total=False):
    """A record as handed to the writer: the hashed columns after WRITER_FIELDS, in their order
    (a test holds the two lists together), and BODY when the service logs bodies."""

    at: Required[dt.datetime]
    kind: Required[str]  # "exchange" | "admin" | "auth" | "checkpoint" …
    request_id: str | None
    door: str | None
    client_id: str | None
    agency_code: str | None
    officer: str | None
    purpose: str | None
    service: str | None
    outcome: str | None
    status: int | None
    error_code: str | None
    latency_ms: float | None
    fields: list[str] | None
    subject_hash: str | None
    upstream: str | None
    trace_id: str | None
    request_bytes: int | None
    response_bytes: int | None
    response_sha256: str | None
    detail: dict[str, Any] | None
    _body: str  # BODY: the encrypted payload, stored apart and not hashed


_EMPTY_ROW = dict.fromkeys(HASHED_FIELDS)


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:  # SQLite hands back naive UTC datetimes
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the record's canonical JSON (which includes prev_hash)."""
    canon = [(_iso(record[k]) if k == "at" else record.get(k)) for k in HASHED_FIELDS]
    return hashlib.sha256(orjson.dumps(canon)).hexdigest()


def new_chain_id() -> str:
    host = socket.gethostname()[:32]
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


class AuditUnavailable(Exception):
    pass


# What can be committed with a record: a statement, a row to insert as (table, values), or a prepared
# statement and its parameters as (statement, params).
Stored = Executable | tuple[Table | Executable, dict[str, Any]]


class StoreConflict(Exception):
    """A statement stored with a record broke a unique constraint (e.g. a message accepted twice at
    once): that record and its statements were not written; the rest of its group was."""


class AuditWriter:
    """Group-commit writer of one chain, which it also seals. Thread-safe; usable
    from async and sync code.

    Seals go into the same transaction as the records they cover: a "start" seal
    with the chain's first group, an "interval" seal every `seal_every` records
    or `seal_seconds` (also when idle), a "shutdown" seal when closed.
    """

    def __init__(self, engine: Engine, *, batch_max: int = 256, chain: str | None = None,
                 seal_every: int = 1000, seal_seconds: float = 10.0):
        self.engine = engine
        self._write_lock = _sqlite_write_lock(engine)
        # SQLite: its commits never checkpoint the WAL (a checkpoint under the write lock stalls every worker)
        self._checkpoints = checkpoints.for_sqlite_file(engine.url.database) if (
            engine.url.get_backend_name() == "sqlite") else None
        self.batch_max = batch_max
        self.chain = chain or new_chain_id()
        self.seal_every = seal_every
        self.seal_seconds = seal_seconds
        self._seq = 0
        self._head = GENESIS
        self._sealed_seq: int | None = None  # None: not even the start seal yet
        self._sealed_at = time.monotonic()
        self._signer: seals.Signer | None = None
        self._forwarder = syslog.from_environment()
        self._witness = witness.Witness.for_engine(engine)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._turn: dict[asyncio.AbstractEventLoop, list[Any]] = {}  # commits queued in each loop's current turn
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._stopping = False
        self._maintain_at = 0.0  # partitions ahead and statistics: at start, then hourly (lgsp.storage.maintenance)
        self._conn: Connection | None = None  # the writer thread's own connection (see _connection)
        self._insert_records = _RecordInsert(engine)
        self._used_at = 0.0
        self._thread.start()

    # -- submitting ------------------------------------------------------
    def submit(self, record: AuditRecord, statements: Sequence[Stored] = ()) -> concurrent.futures.Future:
        """`statements` (e.g. the insert of an accepted message) run in the transaction that commits
        `record`: both are durable, or neither is. A statement is an SQL statement, or a row to insert
        as (table, values)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._stopping:
            fut.set_exception(AuditUnavailable("audit writer stopped"))
        else:
            self._queue.put((record, fut, tuple(statements)))
        return fut

    async def commit(self, record: AuditRecord, statements: Sequence[Stored] = ()) -> None:
        """Wait until `record` (and `statements` with it) is durable; raise AuditUnavailable if it
        cannot be, StoreConflict if one of the statements broke a unique constraint."""
        await self._wait(record, statements)

    async def commit_all(self, records: list[AuditRecord], statements: Sequence[Stored] = ()) -> None:
        """Wait until all of `records` (and `statements`) are durable: consecutive in the chain, in one
        transaction (an exchange's records for several persons are written together or not at all)."""
        await self._wait(records, statements)

    def _wait(self, records: AuditRecord | list[AuditRecord], statements: Sequence[Stored]) -> asyncio.Future[None]:
        return self.queue_all([(records, statements)])[0]

    def queue_all(self, entries: Sequence[tuple[AuditRecord | list[AuditRecord], Sequence[Stored]]]
                  ) -> list[asyncio.Future[None]]:
        """Several commits handed over at once (at the end of the loop's turn, with the turn's other commits),
        so the writer takes them into the same transaction; each entry's event-loop future settles on its own
        (a StoreConflict fails only its entry). The writer settles a group's futures in one call into each
        loop, not a wake-up per exchange."""
        loop = asyncio.get_running_loop()
        items = [(records, _Waiter(loop), tuple(statements)) for records, statements in entries]
        if self._stopping:
            _refuse(items)
        else:
            pending = self._turn.get(loop)
            if pending is None:  # the first of this turn: hand the turn's commits over once it ends
                self._turn[loop] = pending = []
                loop.call_soon(self._hand_over, loop)
            pending.extend(items)
        return [waiter.future for _, waiter, _ in items]

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """The commits queued during one turn of `loop`, to the writer as one item. Handed over one by one,
        the writer thread would wake for the first and commit it nearly alone, while the loop goes on making
        the rest: on PostgreSQL, whose commit is short, groups held 2.5 records at 50 connections, and
        each group costs a fixed hand-over, statement and wake-up. A turn's end comes without a timer."""
        items = self._turn.pop(loop)
        if self._stopping:
            _refuse(items)
        else:
            self._queue.put(items)

    def commit_sync(self, record: AuditRecord, timeout: float = 30, statements: Sequence[Stored] = ()) -> None:
        self.submit(record, statements).result(timeout)

    @property
    def closed(self) -> bool:
        return self._stopping

    def close(self, timeout: float = 10) -> None:
        if self._stopping and not self._thread.is_alive():
            return
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    # -- writing ---------------------------------------------------------
    def _run(self) -> None:
        try:
            self._signer = seals.signer(self.engine)
        except Exception:
            log.error("audit seal key unavailable: chain %s will not be sealed", self.chain, exc_info=True)
        while True:
            if time.monotonic() >= self._maintain_at:
                maintenance.hourly(self.engine, self._write_lock)
                self._maintain_at = time.monotonic() + maintenance.EVERY_SECONDS
            try:
                first = self._queue.get(timeout=self.seal_seconds)
            except queue.Empty:
                self._seal_if_due(idle=True)
                continue
            if first is None:
                break
            batch = first if isinstance(first, list) else [first]  # a list: entries queued together (queue_all)
            while len(batch) < self.batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stopping = True
                    break
                batch += item if isinstance(item, list) else [item]
            self._write(batch)
            if self._stopping and self._queue.empty():
                break
        self._seal_if_due(reason="shutdown")
        self._drop_connection()
        if self._checkpoints is not None:
            self._checkpoints.close()
        maintenance.at_close(self.engine, self._write_lock)

    # -- the writer's connection --------------------------------------------
    def _connection(self) -> Connection:
        """The writer thread's own connection, kept between groups: a group costs no pool checkout and,
        on PostgreSQL, no pre-ping round trip. Pinged only after IDLE_PING_SECONDS unused (the server may
        have dropped it meanwhile); replaced after any failure."""
        now = time.monotonic()
        if self._conn is not None and now - self._used_at > IDLE_PING_SECONDS:
            try:
                self._conn.exec_driver_sql("SELECT 1")
                self._conn.rollback()
            except Exception:
                self._drop_connection()
        if self._conn is None:
            self._conn = self.engine.connect()
            if self._checkpoints is not None:
                self._checkpoints.detach(self._conn.connection.dbapi_connection)
        self._used_at = now
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction on the writer's connection, committed at exit. On PostgreSQL its statements
        and the COMMIT go out in one psycopg pipeline: the group costs one round trip, not one per
        statement (BEGIN, each INSERT, COMMIT). Any failure drops the connection, whatever its state."""
        conn = self._connection()
        try:
            with _pipeline(conn):
                yield conn
                conn.commit()
        except BaseException:
            self._drop_connection()
            raise

    def _pending_seals(self, seq: int, head: str, reason: str | None) -> list[dict]:
        if self._signer is None:
            return []
        out = []
        if self._sealed_seq is None:
            out.append(self._signer.seal(self.chain, 0, GENESIS, "start"))
        due = reason or (
            "interval" if seq - (self._sealed_seq or 0) >= self.seal_every
            or time.monotonic() - self._sealed_at >= self.seal_seconds else None
        )
        if due and (seq > (self._sealed_seq or 0) or due == "shutdown"):
            out.append(self._signer.seal(self.chain, seq, head, due))
        return out

    def _seal_if_due(self, *, idle: bool = False, reason: str | None = None) -> None:
        if self._sealed_seq is None:
            return  # nothing written at all
        if self._seq <= self._sealed_seq and reason != "shutdown":
            return  # nothing written since the last seal; a shutdown seal still closes the chain
        if idle and time.monotonic() - self._sealed_at < self.seal_seconds:
            return
        pending = self._pending_seals(self._seq, self._head, reason or "interval")
        if not pending:
            return
        try:
            with self._write_lock, self._transaction() as conn:
                conn.execute(_INSERT_SEALS, pending)
        except Exception as exc:
            log.error("audit seal failed: %s", type(exc).__name__)
            return
        self._mark_sealed(self._seq)
        self._publish(pending)

    def _mark_sealed(self, seq: int) -> None:
        self._sealed_seq = seq
        self._sealed_at = time.monotonic()

    def _write(self, batch) -> None:
        try:
            self._write_group(batch)
        except IntegrityError:
            if len(batch) == 1 or not any(map(_stored, batch)):
                self._fail(batch, StoreConflict("unique constraint") if _stored(batch[0]) else AuditUnavailable(
                    "IntegrityError"))
                return
            # One record's statements conflicted: write the group one by one, so only that one fails.
            for item in batch:
                try:
                    self._write_group([item])
                except IntegrityError:
                    self._fail([item], StoreConflict("unique constraint") if _stored(item) else AuditUnavailable(
                        "IntegrityError"))
                except Exception as exc:
                    self._fail([item], AuditUnavailable(type(exc).__name__), exc)
        except Exception as exc:
            self._fail(batch, AuditUnavailable(str(type(exc).__name__)), exc)

    @staticmethod
    def _fail(batch, error: Exception, cause: Exception | None = None) -> None:
        if cause is not None:
            log.error("audit write failed for %d records: %s: %s", len(batch), type(cause).__name__, cause)
        _settle(batch, error)

    def _write_group(self, batch) -> None:
        """Insert the group's records (and run their statements) in one transaction; raise if it fails,
        the chain head staying where the database has it."""
        seq, head = self._seq, self._head
        rows, bodies, statements = [], [], []
        for item in batch:
            statements.extend(_stored(item))
            for record in item[0] if isinstance(item[0], list) else (item[0],):  # commit_all: several records
                seq += 1
                # Every column named: one INSERT takes the whole group, whatever kinds it mixes.
                row = dict(_EMPTY_ROW, **record, chain=self.chain, seq=seq, prev_hash=head)
                if BODY in row:
                    bodies.append({"chain": self.chain, "seq": seq, "ciphertext": row.pop(BODY)})
                row["hash"] = head = record_hash(row)
                rows.append(row)
        pending = self._pending_seals(seq, head, None)
        started = time.perf_counter()
        try:
            self._insert_group(rows, bodies, pending, statements)
        except DBAPIError as exc:
            # The kept connection was gone (a database restart, an idle connection cut): what the pool's
            # pre-ping would have caught. Unless the group got committed before the line went, once more.
            if not exc.connection_invalidated or self._committed(rows[0]):
                raise
            self._insert_group(rows, bodies, pending, statements)
        metrics.audit_commit_seconds.observe(time.perf_counter() - started)
        self._seq, self._head = seq, head
        if self._checkpoints is not None:
            self._checkpoints.due()
        if pending:
            self._mark_sealed(pending[-1]["seq"])
        metrics.audit_batch_records.observe(len(rows))
        _settle(batch, None)
        if self._forwarder is not None:  # after the answers are released: a SIEM never delays one
            self._forwarder.send(rows)
        if pending:
            self._publish(pending)

    def _insert_group(self, rows: list[dict[str, Any]], bodies: list[dict[str, Any]], seals: list[dict[str, Any]],
                      statements: list[Stored]) -> None:
        if not (bodies or seals or statements) and self.engine.dialect.name == "postgresql" and (
                self._insert_autocommit(rows)):
            return
        with self._write_lock, self._transaction() as conn:
            self._insert_records(conn, rows)
            if bodies:
                conn.execute(_INSERT_BODIES, bodies)
            if seals:
                conn.execute(_INSERT_SEALS, seals)
            _run_statements(conn, statements)

    def _insert_autocommit(self, rows: list[dict[str, Any]]) -> bool:
        """A group of records alone on PostgreSQL (no bodies, seals or stored statements: nearly every
        group) is one INSERT statement in autocommit: atomic and durable (synchronous_commit=on) when
        it returns, with no BEGIN, COMMIT or pipeline around it, which cost psycopg more client CPU
        than the INSERT itself. False, and nothing done, when the connection is in a transaction (the
        pool's pre-ping of a new connection leaves one open)."""
        conn = self._connection()
        driver: Any = conn.connection.driver_connection
        if driver is None or driver.info.transaction_status != _PG_IDLE:
            return False
        try:
            driver.autocommit = True
            self._insert_records(conn, rows)
            driver.autocommit = False
            conn.commit()  # ends SQLAlchemy's own (autobegun) transaction; nothing is sent: the server is idle
        except BaseException:
            self._drop_connection()  # never reused, so never left in autocommit
            raise
        return True

    def _committed(self, row: dict[str, Any]) -> bool:
        """Whether the record `row` is in the database (asked on a pooled connection; raises if it cannot be)."""
        with self.engine.connect() as conn:
            return conn.execute(select(audit_records.c.seq).where(
                audit_records.c.chain == row["chain"], audit_records.c.seq == row["seq"])).first() is not None

    def _publish(self, sealed: list[dict]) -> None:
        """Sealed heads leave the database once committed: to the witness, and to syslog when configured."""
        self._witness.append(sealed)
        if self._forwarder is not None:
            self._forwarder.send(sealed, msgid="seal")


def _inline(statement: Any) -> Any:
    """An INSERT that asks nothing back (no RETURNING of its key): in a pipeline no answer is read
    before the COMMIT, and nothing the writer stores needs one."""
    return statement.inline() if isinstance(statement, Insert) else statement


_PG_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE (psycopg is imported only where PostgreSQL is used)
_INSERT_BODIES, _INSERT_SEALS = (insert(t).inline() for t in (audit_bodies, audit_seals))
# Every column of a record row, in the order of _RecordInsert's parameters.
_RECORD_COLUMNS = (*HASHED_FIELDS, "hash")
_JSON_COLUMNS = frozenset(c.name for c in audit_records.c if isinstance(c.type, JSON))


class _RecordInsert:
    """The INSERT of a group's records, written once, not through SQLAlchemy Core (which rebuilt each
    row's parameters per row: bind processors looked up, parameter dicts constructed).

    SQLite: one executemany of tuples, each column encoded by the dialect's own bind processor (the
    datetime and JSON text SQLAlchemy stores). PostgreSQL: the whole group as one JSON parameter,
    unpacked by json_to_recordset into typed columns, so any group is one prepared statement and
    psycopg encodes one string (orjson) instead of each row's values: about half the client CPU of
    an executemany, and one statement for the server. Either way the stored values are exactly what
    SQLAlchemy stored (tests/audit/test_audit_writer_rows.py)."""

    def __init__(self, engine: Engine):
        dialect = engine.dialect
        self._json = dialect.name == "postgresql"
        if self._json:
            # JSON columns travel as their text (json.dumps, which psycopg's Json adapter uses for
            # SQLAlchemy) and are cast back, so the stored json text is byte for byte Core's.
            kinds = {name: "text" if name in _JSON_COLUMNS else audit_records.c[name].type.compile(dialect=dialect)
                     for name in _RECORD_COLUMNS}
            values = ", ".join(f"{n}::json" if n in _JSON_COLUMNS else n for n in _RECORD_COLUMNS)
            self.sql = (f"INSERT INTO {audit_records.name} ({', '.join(_RECORD_COLUMNS)}) SELECT {values} "
                        f"FROM json_to_recordset(%s::json) AS r({', '.join(f'{n} {t}' for n, t in kinds.items())})")
            return
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.sql = (f"INSERT INTO {audit_records.name} ({', '.join(_RECORD_COLUMNS)}) "
                    f"VALUES ({', '.join([mark] * len(_RECORD_COLUMNS))})")
        processors = [audit_records.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                      for name in _RECORD_COLUMNS]
        # (position, processor) of the columns that need one: two or three of twenty-five.
        self._encode = [(i, p) for i, p in enumerate(processors) if p is not None]

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = [row[name] for name in _RECORD_COLUMNS]
        for i, process in self._encode:
            values[i] = process(values[i])
        return tuple(values)

    def group(self, rows: list[dict[str, Any]]) -> str:
        """The group as json_to_recordset reads it (PostgreSQL)."""
        return orjson.dumps([{name: json.dumps(row[name]) if name in _JSON_COLUMNS else row[name]
                              for name in _RECORD_COLUMNS} for row in rows]).decode()

    def __call__(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if self._json:
            conn.exec_driver_sql(self.sql, (self.group(rows),))
        else:
            conn.exec_driver_sql(self.sql, [self.params(row) for row in rows])


def _pipeline(conn: Connection) -> contextlib.AbstractContextManager[Any]:
    """psycopg's pipeline mode on a PostgreSQL connection (statements sent without waiting for each
    answer; errors still raised, at the latest by the COMMIT); nothing on other databases."""
    driver = conn.connection.driver_connection
    pipeline = getattr(driver, "pipeline", None) if conn.dialect.name == "postgresql" else None
    return pipeline() if pipeline is not None else contextlib.nullcontext()


def _run_statements(conn, statements: list) -> None:
    """Run what was stored with a group's records. Rows to insert, given as (table, values), go in one
    executemany per table (a group of accepted messages is one INSERT); a prepared statement with its
    parameters, (statement, params), in one executemany per statement; any other statement alone, once per
    transaction however many items of the group hand over that same object (a wake-up NOTIFY)."""
    rows: dict[Any, list[dict]] = {}
    for statement in statements:
        if isinstance(statement, tuple):
            rows.setdefault(statement[0], []).append(statement[1])
    for target, values in rows.items():
        conn.execute(_inline(insert(target) if isinstance(target, Table) else target), values)
    for statement in {id(s): s for s in statements if not isinstance(s, tuple)}.values():
        conn.execute(_inline(statement))


def _refuse(items: list[Any]) -> None:
    """Tell the waiters of commits that came after the writer stopped."""
    for _, waiter, _ in items:
        waiter.future.set_exception(AuditUnavailable("audit writer stopped"))


class _Waiter:
    """An exchange waiting in its event loop for the commit of its record."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.future = loop, loop.create_future()


def _settle(batch: Sequence[tuple[Any, ...]], error: Exception | None) -> None:
    """Tell every item of a group that it is durable (error None) or why not: thread futures directly,
    the waiters of each event loop in one callback on that loop."""
    waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for item in batch:
        fut = item[1]
        if isinstance(fut, _Waiter):
            waiting.setdefault(fut.loop, []).append(fut.future)
        elif error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
    for loop, futures in waiting.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one is waiting any more
            loop.call_soon_threadsafe(_wake, futures, error)


def _wake(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for fut in futures:
        if fut.done():  # the exchange was cancelled meanwhile (its client went away)
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


def _stored(item: tuple) -> tuple:
    """The statements queued with a record (an item is (record, future[, statements]))."""
    return item[2] if len(item) > 2 else ()


class _FileLock:
    """An exclusive flock held around each SQLite write transaction.

    SQLite lets one writer in at a time and makes the others poll with growing
    sleeps (up to 100 ms each), which is what the latency tail of several worker
    processes on one SQLite file looked like. Waiting on a kernel lock instead
    hands the database over the moment the previous group commit is done.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def __enter__(self):
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _sqlite_write_lock(engine: Engine):
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        return contextlib.nullcontext()
    return _FileLock(database + ".write-lock")


_writers: dict[str, AuditWriter] = {}
_writers_lock = threading.Lock()


def writer_for(engine: Engine) -> AuditWriter:
    """This process's writer (one chain per process), made on first use and sealed at exit."""
    key = str(engine.url)
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None or writer.closed:
            writer = _writers[key] = AuditWriter(engine, batch_max=settings().audit_batch_max)
            atexit.register(writer.close)
        return writer


def note_read(engine: Engine, actor: str, action: str, detail: dict[str, Any]) -> None:
    """Record that someone read the audit trail (search, record, report, export)."""
    writer_for(engine).commit_sync({
        "at": dt.datetime.now(dt.UTC), "kind": "admin", "outcome": "ok",
        "detail": {"actor": actor, "action": action, "target": "audit", "before": None, "after": detail},
    })


def close_writers() -> None:
    """Seal and stop this process's writers (at exit, or before their database goes away)."""
    with _writers_lock:
        for writer in _writers.values():
            writer.close()
        _writers.clear()


def read_chain(engine: Engine, chain: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.chain == chain).order_by(audit_records.c.seq))
        return [dict(r._mapping) for r in rows]
