"""Engine creation and migrations: SQLite embedded by default, PostgreSQL in production."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler

from lgsp.config import private_dir, private_file

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; FULL makes each commit
    # durable (fsync), which group commit of audit records amortises.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class _HintingSQLiteCompiler(SQLiteCompiler):
    """Renders `Select.with_hint(table, "INDEXED BY ix", "sqlite")` after the table name.

    SQLAlchemy leaves SQLite's from-hints out; the audit queries pin their index
    with one, so a query whose index is gone fails instead of scanning.
    """

    def get_from_hint_text(self, table, text):
        return text


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            # Owner-only, like the master secret: SQLite gives its -wal and -shm files the same mode.
            private_dir(Path(path).parent)
            private_file(Path(path))
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=8, max_overflow=8)
        event.listen(engine, "connect", _sqlite_pragmas)
        engine.dialect.statement_compiler = _HintingSQLiteCompiler
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


@cache
def engine_for(url: str) -> Engine:
    return make_engine(url)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database schema to `revision` with Alembic."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine_for(url)
    command.upgrade(cfg, revision)
