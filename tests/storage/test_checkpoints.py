"""WAL checkpoints in a thread of their own: a detached connection's commits never checkpoint, the thread does."""
from __future__ import annotations

import sqlite3
import time

from lgsp.storage.checkpoints import Checkpointer, for_sqlite_file


def test_detached_commits_leave_the_wal_to_the_checkpointer(tmp_path):
    path = tmp_path / "x.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    Checkpointer.detach(db)
    db.execute("CREATE TABLE t (v TEXT)")
    for _ in range(600):  # ~1800 pages of WAL: past SQLite's own 1000-page checkpoint
        db.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
    wal = path.with_name(path.name + "-wal")
    grown = wal.stat().st_size
    assert grown > 1500 * 4096  # no commit checkpointed (and restarted) the WAL

    checkpoints = Checkpointer(path)
    try:
        checkpoints.due()
        deadline = time.monotonic() + 10
        while checkpoints.runs < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checkpoints.runs >= 1
        # everything is in the database file: the next commit starts the WAL again from its beginning
        db.execute("INSERT INTO t VALUES ('y')")
        assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (601,)
        busy, frames, done = sqlite3.connect(path).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, frames, done) == (0, frames, frames) and frames < 10
    finally:
        checkpoints.close()
        db.close()


def test_only_files_get_a_checkpointer():
    assert for_sqlite_file(None) is None
    assert for_sqlite_file(":memory:") is None
    assert for_sqlite_file("file:x?mode=memory") is None
    assert for_sqlite_file("/tmp/x.db") is not None


def test_close_without_use_starts_no_thread(tmp_path):
    checkpoints = Checkpointer(tmp_path / "y.sqlite")
    checkpoints.close()
    checkpoints.due()  # after close: nothing starts
    assert checkpoints._thread is None
