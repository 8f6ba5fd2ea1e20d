"""Backup and restore of the LGSP database (`lgsp backup`, `lgsp restore`).

PostgreSQL: pg_dump's custom format, restored with pg_restore in one transaction
into an empty database. SQLite: SQLite's online backup API (a consistent copy
while the gateway runs). Beside the dump, FILE.json records the schema version
and a fingerprint of the master secret — never the secret itself: the dump holds
the keys encrypted under it, so the two are kept apart and both are needed.
A restore refuses a master secret with another fingerprint (the keys would be
unreadable), then checks the keys open and verifies the whole audit trail.
"""
from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from lgsp.crypto import derive_key

FORMAT = "lgsp-backup/1"


class BackupError(Exception):
    """The backup or restore cannot go on; the message says why."""


def secret_fingerprint() -> str:
    """Identifies the master secret without revealing it (a derived key's first bytes)."""
    return derive_key("lgsp/master-secret-fingerprint", 8).hex()


def metadata_path(dump: Path) -> Path:
    return dump.with_name(dump.name + ".json")


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client).")
    return found


def _libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_path(engine: Engine) -> Path:
    return Path(engine.url.database or "")


def _run(cmd: list[str]) -> None:
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise BackupError(f"{Path(cmd[0]).name} failed: {run.stderr.strip()[-2000:]}")


def backup(engine: Engine, dump: Path) -> dict:
    """Write a consistent copy of the database to `dump`, and its metadata beside it."""
    dump.parent.mkdir(parents=True, exist_ok=True)
    if engine.dialect.name == "postgresql":
        _run([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
              f"--file={dump}", f"--dbname={_libpq_url(engine)}"])
    else:
        with sqlite3.connect(_sqlite_path(engine)) as src, sqlite3.connect(dump) as dst:
            src.backup(dst)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_heads()
    meta = {"format": FORMAT, "database": engine.dialect.name, "schema": list(revision),
            "secret_fingerprint": secret_fingerprint(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "bytes": dump.stat().st_size}
    metadata_path(dump).write_text(json.dumps(meta, indent=2) + "\n")
    os.chmod(dump, 0o600)
    return meta


def restore(engine: Engine, dump: Path) -> dict:
    """Load `dump` into the (empty) database of `engine`. Returns the backup's metadata."""
    meta_file = metadata_path(dump)
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if meta and meta.get("database") != engine.dialect.name:
        raise BackupError(f"This is a {meta.get('database')} backup; the target database is {engine.dialect.name}.")
    if meta and meta.get("secret_fingerprint") != secret_fingerprint():
        raise BackupError(
            "LGSP_SECRET_KEY is not the master secret this backup's keys were made with "
            f"(fingerprint {secret_fingerprint()}, the backup needs {meta['secret_fingerprint']}): "
            "restore the master secret from its own backup first.")
    if inspect(engine).get_table_names():
        raise BackupError("The target database is not empty: restore into a new, empty database.")
    if engine.dialect.name == "postgresql":
        _run([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
              f"--dbname={_libpq_url(engine)}", str(dump)])
    else:
        engine.dispose()
        with sqlite3.connect(dump) as src, sqlite3.connect(_sqlite_path(engine)) as dst:
            src.backup(dst)
    engine.dispose()  # pooled connections saw the empty database
    return meta
