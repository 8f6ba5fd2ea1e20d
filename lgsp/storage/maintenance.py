"""What the gateway does by itself to keep the audit trail fast as it grows.

The audit writer calls `hourly` when it starts and every hour, and `at_close`
when it stops:

- PostgreSQL: the coming months' partitions of audit_records exist before their
  first record (partitions.ensure_months); the partitioned parent is analysed
  when its statistics fell behind (autovacuum analyses each partition, never the
  parent, whose statistics estimate the queries over the whole trail).
- SQLite: PRAGMA optimize, which runs ANALYZE where statistics are missing or
  stale. SQLite before 3.46 only looks at tables the same connection queried,
  and the writer only inserts, so there the audit tables are analysed directly.
  `analysis_limit` bounds the cost either way (a sample per index, not a full
  scan: milliseconds at millions of rows).

The audit queries do not depend on these statistics for their index (they pin
it, see lgsp.audit.search); other queries and future ones do.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3

from sqlalchemy import Engine, text

from lgsp.storage import partitions

log = logging.getLogger(__name__)

EVERY_SECONDS = 3600.0
ANALYSIS_LIMIT = 1000
STALE = 0.2  # re-analyse the PostgreSQL parent when its row estimate is off by 20 %


def hourly(engine: Engine, write_lock=None) -> None:
    """Partitions ahead (PostgreSQL) and fresh statistics; never raises (logs)."""
    try:
        if engine.url.get_backend_name() == "postgresql":
            partitions.ensure_months(engine)
        keep_statistics(engine, write_lock)
    except Exception as exc:
        log.warning("audit maintenance failed: %s: %s", type(exc).__name__, exc)


def at_close(engine: Engine, write_lock=None) -> None:
    if engine.url.get_backend_name() == "sqlite":
        hourly(engine, write_lock)


def keep_statistics(engine: Engine, write_lock=None) -> None:
    """Refresh the planner's statistics where they are missing or stale."""
    with write_lock or contextlib.nullcontext():
        if engine.url.get_backend_name() == "sqlite":
            _sqlite_optimize(engine)
        elif engine.url.get_backend_name() == "postgresql":
            _postgres_parent(engine)


def _sqlite_optimize(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.exec_driver_sql(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
        if sqlite3.sqlite_version_info >= (3, 46, 0):
            conn.exec_driver_sql("PRAGMA optimize=0x10002")  # 0x10000: every table, not only this connection's
        else:
            conn.exec_driver_sql("ANALYZE audit_records")
            conn.exec_driver_sql("PRAGMA optimize")
        conn.commit()


def _postgres_parent(engine: Engine) -> None:
    with engine.connect() as conn:
        if not partitions.is_partitioned(conn):
            return
        parent, children = conn.execute(text(
            "SELECT p.reltuples, (SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = p.oid) "
            "FROM pg_class p WHERE p.oid = to_regclass(:t)"), {"t": partitions.TABLE}).one()
    if parent >= 0 and abs(children - parent) <= STALE * max(parent, 1000):
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ANALYZE {partitions.TABLE}"))
