"""WAL checkpoints of a SQLite file, in a thread of their own rather than inside a commit.

Left to itself, SQLite checkpoints inside the commit that takes the WAL past 1000 pages: that
commit copies the pages into the database file and syncs it, 5 ms on a quiet disk, 25 to 200 ms
when the machine's disk is busy, while the committer holds the write lock. For the audit writer
that stalls every exchange of every worker behind the lock; for the embedded counter store it
stalls a worker's event loop. A refusal flood fills both WALs several times faster (an audit
group touches about 28 pages: the records and their indexes), so these stalls were the
well-behaved client's latency tail beside a greedy one (benchmarks/results/2026-12-02-fairness.md).

A connection handed to `Checkpointer.detach` never checkpoints; its committer calls `due()` after
a commit (an event set, no system call), and the thread runs a PASSIVE checkpoint at most every
EVERY seconds. A passive checkpoint takes no write lock: commits go on being appended to the WAL
meanwhile. Durability is unchanged: a commit is durable once its WAL frames are synced (or, with
synchronous=NORMAL, as it was), checkpointed or not. Two processes' checkpointers on one file
simply take turns (the second finds the checkpoint lock taken and tries again next time).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Checkpointer:
    """One SQLite file's checkpoints, in a daemon thread started on first use."""

    EVERY = 0.5  # s between checkpoints while commits come in: a small WAL, each checkpoint short
    # Known gap: under commits without a pause (a saturated benchmark) a passive checkpoint may never
    # find the whole WAL copied at a moment without a writer, so SQLite does not start it again and it
    # grows until the load pauses. A TRUNCATE checkpoint past a size bound was tried: it holds the
    # writers while it runs and lifted the acceptances' p99 from ~30 ms to 95–276 ms, so it is not here.

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._due, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self.runs = 0   # checkpoints done (tests)

    @staticmethod
    def detach(dbapi_connection: Any) -> None:
        """This connection's commits no longer checkpoint (SQLite's own setting is 1000 pages)."""
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    def due(self) -> None:
        """Something was committed: checkpoint soon."""
        if self._thread is None:
            with self._start:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
                    self._thread.start()
        self._due.set()

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        while True:
            self._due.wait()
            if self._stop.is_set():
                break
            self._due.clear()
            try:
                if db is None:
                    db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.runs += 1
            except sqlite3.Error as exc:  # another process checkpointing this file: the next turn catches up
                log.debug("checkpoint of %s: %s", self.path, exc)
            if self._stop.wait(self.EVERY):
                break
        if db is not None:
            db.close()


def for_sqlite_file(database: str | None) -> Checkpointer | None:
    """A checkpointer for a SQLite database file; None for memory databases and URIs."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Checkpointer(database)
