"""What the PostgreSQL server does for a benchmark run: its side of the bill.

benchmarks/run.py counts the CPU of the gateway's processes; on PostgreSQL part of each exchange's
work moves into the server (a backend per pooled connection, the WAL writer). This module reads,
before and after a run, for the benchmark's own database only (a fresh one, so nothing else is
mixed in):

- commits, rollbacks and inserted/fetched rows (pg_stat_database), to see how many transactions and
  round trips an exchange costs;
- the CPU of the server processes serving that database (their /proc stat: backends run on this box);
- the server's WAL flushes (pg_stat_wal, server-wide: other users of a shared server are counted too).

    snap = PgSide(url); before = snap.read(); ...; print(snap.per_request(before, snap.read(), n))
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

TICK = os.sysconf("SC_CLK_TCK")


class PgSide:
    def __init__(self, url: str):
        self.database = make_url(url).database
        # Its own tiny engine on the same database; its one connection is left out of the CPU count.
        self.engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=1,
                                    isolation_level="AUTOCOMMIT")

    def read(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            # Statistics are flushed by each backend at most once a second (PG 15+: pgstat shared memory);
            # a snapshot reads what is there now.
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            db = conn.execute(text(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_fetched FROM pg_stat_database "
                "WHERE datname = :d"), {"d": self.database}).one()
            pids = [r[0] for r in conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                {"d": self.database})]
            wal = conn.execute(text("SELECT wal_records, wal_sync, wal_write FROM pg_stat_wal")).first()
        return {"commits": db[0], "rollbacks": db[1], "inserted": db[2], "fetched": db[3],
                "backend_cpu": {pid: _cpu(pid) for pid in pids},
                "wal_sync": wal[1] if wal else 0, "wal_write": wal[2] if wal else 0}

    @staticmethod
    def per_request(before: dict[str, Any], after: dict[str, Any], requests: int) -> dict[str, float]:
        n = max(requests, 1)
        # A backend alive at both ends is counted by its difference; one that started meanwhile in full.
        cpu = sum(c - before["backend_cpu"].get(pid, 0.0) for pid, c in after["backend_cpu"].items())
        return {
            "pg_commits": (after["commits"] - before["commits"]) / n,
            "pg_rollbacks": (after["rollbacks"] - before["rollbacks"]) / n,
            "pg_rows_in": (after["inserted"] - before["inserted"]) / n,
            "pg_rows_read": (after["fetched"] - before["fetched"]) / n,
            "pg_cpu_ms": cpu * 1000 / n,
            "pg_wal_syncs": (after["wal_sync"] - before["wal_sync"]) / n,
        }

    def checkpoint(self) -> None:
        """A CHECKPOINT before a run, so each PostgreSQL run starts from the same WAL state."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("CHECKPOINT")

    def dispose(self) -> None:
        self.engine.dispose()


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone or unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK
