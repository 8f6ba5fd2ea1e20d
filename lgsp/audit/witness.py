"""The witness: every seal leaves the database as it is made, to an append-only log.

Like the signed tree heads a Certificate Transparency monitor keeps, the witness
holds the chain heads the gateway sealed, somewhere a database writer does not
control, so deleting a chain or its sealed tail (seals included) no longer goes
unseen: `lgsp audit verify` compares the database with it (lgsp/audit/anchor.py).

LGSP_AUDIT_WITNESS (default LGSP_HOME/audit-witness/) is a directory of JSON
Lines files, `heads-YYYY-MM-DD.jsonl` (the seal's UTC day), one line per seal,
appended after the transaction that stored the seal committed:

    {"v": 1, "db": ID, "chain", "seq", "head_hash", "at", "kid", "reason", "signature"}

`signature` is the seal's own Ed25519 signature (lgsp/audit/seals.py), so a line is
checked with the trusted keys like the seal. `db` names the database the seal
went into (LGSP_AUDIT_DATABASE_ID, default a hash of the database's location:
driver, host, port and name, or the SQLite file), so one witness directory can
serve several databases and a verifier only compares lines of its own.
Several worker processes append at once: each write is one O_APPEND write
under an exclusive flock, then fsync.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import orjson
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from lgsp.config import settings

log = logging.getLogger(__name__)

VERSION = 1


def witness_dir() -> Path:
    return Path(os.environ.get("LGSP_AUDIT_WITNESS") or settings().home / "audit-witness")


def database_id(url: URL) -> str:
    """The database's name in the witness: where it is, not who logs in or with what password."""
    if os.environ.get("LGSP_AUDIT_DATABASE_ID"):
        return os.environ["LGSP_AUDIT_DATABASE_ID"]
    backend = url.get_backend_name()
    if backend == "sqlite":
        memory = url.database in (None, "", ":memory:")
        where = ":memory:" if memory else str(Path(url.database).resolve())
    else:
        where = f"{url.host or ''}:{url.port or ''}/{url.database or ''}"
    return hashlib.sha256(f"{backend}|{where}".encode()).hexdigest()[:16]


def _stamp(value) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)


def line(db: str, seal: Mapping) -> bytes:
    return orjson.dumps({"v": VERSION, "db": db, "chain": seal["chain"], "seq": seal["seq"],
                         "head_hash": seal["head_hash"], "at": _stamp(seal["at"]), "kid": seal["kid"],
                         "reason": seal["reason"], "signature": seal["signature"]}) + b"\n"


class Witness:
    """Appends the seals of one database to the witness directory."""

    def __init__(self, directory: Path, db: str):
        self.directory = directory
        self.db = db

    @classmethod
    def for_engine(cls, engine: Engine) -> Witness:
        return cls(witness_dir(), database_id(engine.url))

    def append(self, sealed: Iterable[Mapping]) -> bool:
        """Write the seals; False (and an error in the log) if the witness cannot be written."""
        by_file: dict[str, list[bytes]] = {}
        for seal in sealed:
            day = _stamp(seal["at"])[:10]
            by_file.setdefault(f"heads-{day}.jsonl", []).append(line(self.db, seal))
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, lines in by_file.items():
                _append(self.directory / name, b"".join(lines))
        except OSError as exc:
            log.error("audit witness %s not written: %s", self.directory, exc)
            return False
        return True


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    """One witnessed seal, or a line that could not be read (`problem`)."""
    where: str
    seal: dict | None
    problem: str | None = None


def read(directory: Path, db: str | None) -> Iterator[Entry]:
    """The witnessed seals of database `db` (None: of any database), file by file in day order."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("heads-*.jsonl")):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path.name}:{number}"
                if not raw.strip():
                    continue
                try:
                    item = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    yield Entry(where, None, "not JSON")
                    continue
                if not isinstance(item, dict) or (db is not None and item.get("db") != db):
                    continue
                try:
                    seal = {"chain": str(item["chain"]), "seq": int(item["seq"]), "head_hash": str(item["head_hash"]),
                            "at": dt.datetime.fromisoformat(str(item["at"]).replace("Z", "+00:00")),
                            "kid": str(item["kid"]), "reason": str(item["reason"]),
                            "signature": str(item["signature"])}
                except (KeyError, ValueError, TypeError) as exc:
                    yield Entry(where, None, f"malformed ({exc})")
                    continue
                yield Entry(where, seal)


def compact(directory: Path, before: dt.date) -> dict[str, int]:
    """Fold the day files before `before` (at least a day old) into one file that keeps, per
    database and chain, the start seal and the highest head: what catches a deleted chain, a
    deleted tail and a rewrite (every rewrite changes the head). Intermediate heads, which only
    say *where* a chain was rewritten, are dropped. Lines that cannot be read are kept as they are.
    """
    if before > dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1):
        raise ValueError("only files at least one whole day old can be compacted (a late seal may still land)")
    old = [p for p in sorted(directory.glob("heads-*.jsonl")) if p.name[6:16] < before.isoformat()]
    if not old:
        return {"files": 0, "lines": 0, "kept": 0}
    starts: dict[tuple, bytes] = {}
    tops: dict[tuple, tuple[int, bytes]] = {}
    unreadable: list[bytes] = []
    lines = 0
    for path in old:
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            lines += 1
            try:
                item = orjson.loads(raw)
                key, seq = (item["db"], item["chain"]), int(item["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                unreadable.append(raw)
                continue
            if seq == 0:
                starts.setdefault(key, raw)
            elif seq >= tops.get(key, (-1, b""))[0]:
                tops[key] = (seq, raw)
    out = list(starts.values()) + [raw for _, raw in tops.values()] + unreadable
    target = directory / f"heads-{(before - dt.timedelta(days=1)).isoformat()}-compacted.jsonl"
    partial = directory / (target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(raw + b"\n" for raw in out))
        f.flush()
        os.fsync(f.fileno())
    partial.rename(target)  # first the folded file, then the old ones go: a crash leaves duplicates, never a gap
    for path in old:
        if path != target:
            path.unlink()
    return {"files": len(old), "lines": lines, "kept": len(out)}
