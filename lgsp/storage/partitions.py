"""Monthly partitions of the audit trail on PostgreSQL (SQLite keeps one plain table).

`audit_records` is range-partitioned on `at`: one partition per calendar month
(UTC), named `audit_records_yYYYYmMM`, and a default partition that catches
anything outside them so an insert never fails. The gateway creates the coming
months ahead of time (`ensure_months`, from the audit writer); retention drops a
month that is wholly archived (`drop_month`) instead of deleting its rows.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

TABLE = "audit_records"
DEFAULT = f"{TABLE}_default"
MONTHS_AHEAD = 3
UTC = dt.timezone.utc
# Partition DDL waits at most this long for a lock, so a long read never makes
# it queue ahead of the audit writer's inserts; it is retried an hour later.
LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class Month:
    start: dt.datetime   # first instant, UTC
    end: dt.datetime     # first instant of the next month

    @property
    def name(self) -> str:
        return f"{TABLE}_y{self.start:%Y}m{self.start:%m}"

    @classmethod
    def of(cls, moment: dt.datetime) -> "Month":
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        start = dt.datetime(moment.year, moment.month, 1, tzinfo=UTC)
        return cls(start, _next_month(start))


def _next_month(start: dt.datetime) -> dt.datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def months(first: dt.datetime, last: dt.datetime) -> Iterator[Month]:
    """Every month from the one holding `first` to the one holding `last`."""
    month = Month.of(first)
    while month.start <= last:
        yield month
        month = Month(month.end, _next_month(month.end))


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return conn.execute(text("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(:t)"),
                        {"t": TABLE}).scalar() is True


def existing(conn: Connection) -> dict[str, tuple[dt.datetime, dt.datetime] | None]:
    """The partitions of audit_records: name → (from, to), None for the default one."""
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(:t)"), {"t": TABLE}).all()
    out: dict[str, tuple[dt.datetime, dt.datetime] | None] = {}
    for name, bound in rows:
        out[name] = None if bound == "DEFAULT" else _bounds(bound)
    return out


def _bounds(bound: str) -> tuple[dt.datetime, dt.datetime]:
    # "FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')"
    parts = bound.split("'")
    return tuple(dt.datetime.fromisoformat(p).astimezone(UTC) for p in (parts[1], parts[3]))  # type: ignore[return-value]


def create_default(conn: Connection) -> None:
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {DEFAULT} PARTITION OF {TABLE} DEFAULT"))


def create_month(conn: Connection, month: Month) -> bool:
    """Add the month's partition; rows already in the default partition for it move in. False: it existed."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": TABLE})  # one creator at a time
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": month.name}).scalar() is not None:
        return False
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    lo, hi = month.start.isoformat(), month.end.isoformat()
    # Built beside the table and attached: ATTACH takes a lighter lock on the parent than
    # CREATE … PARTITION OF (inserts and reads go on), and the CHECK spares it a scan.
    conn.execute(text(f"CREATE TABLE {month.name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    conn.execute(text(f"ALTER TABLE {month.name} ADD CONSTRAINT {month.name}_at "
                      f"CHECK (at >= '{lo}' AND at < '{hi}')"))
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": DEFAULT}).scalar() is not None:
        conn.execute(text(f"WITH moved AS (DELETE FROM {DEFAULT} WHERE at >= '{lo}' AND at < '{hi}' RETURNING *) "
                          f"INSERT INTO {month.name} SELECT * FROM moved"))
    conn.execute(text(f"ALTER TABLE {TABLE} ATTACH PARTITION {month.name} FOR VALUES FROM ('{lo}') TO ('{hi}')"))
    conn.execute(text(f"ALTER TABLE {month.name} DROP CONSTRAINT {month.name}_at"))
    return True


def ensure_months(engine: Engine, first: dt.datetime | None = None, last: dt.datetime | None = None) -> list[str]:
    """Create the partitions of months `first`..`last` (default: this month and MONTHS_AHEAD more).

    Each month in its own transaction; a month that cannot get its lock now is
    left for the next run (its rows land in the default partition meanwhile,
    and move into it when it is made). Returns the names created.
    """
    now = dt.datetime.now(UTC)
    first = first or now
    last = last or Month.of(now).start + dt.timedelta(days=31 * MONTHS_AHEAD)
    created: list[str] = []
    with engine.connect() as conn:
        if not is_partitioned(conn):
            return created
        have = set(existing(conn))
    for month in months(first, last):
        if month.name in have:
            continue
        try:
            with engine.begin() as conn:
                if create_month(conn, month):
                    created.append(month.name)
        except Exception as exc:  # never stop the writer: the default partition takes the rows
            log.warning("audit partition %s not created now: %s", month.name, exc)
    return created


def whole_months_before(conn: Connection, cutoff: dt.datetime) -> list[tuple[str, Month]]:
    """Month partitions that end at or before `cutoff`, oldest first."""
    out = [(name, Month(*bounds)) for name, bounds in existing(conn).items()
           if bounds is not None and bounds[1] <= cutoff]
    return sorted(out, key=lambda item: item[1].start)


def drop_month(conn: Connection, name: str) -> None:
    """Drop a month partition (in the caller's transaction: retention's seal and base go with it)."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(text(f"ALTER TABLE {TABLE} DETACH PARTITION {name}"))
    conn.execute(text(f"DROP TABLE {name}"))
