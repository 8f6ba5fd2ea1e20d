"""The records of the shared data store: one table, SQLAlchemy Core, SQLite or PostgreSQL.

The table belongs to the adapter, not to the LGSP: it lives in whatever
database the connection names (by default the LGSP's own), so it is created
here with `create_all` for this one table rather than by the LGSP's Alembic
migrations (docs/datastore.md says why). Every function here blocks; the
adapter runs them in a worker thread.
"""
from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    DateTime,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from lgsp_adapters.datastore.datasets import Condition

metadata = MetaData()

records = Table(
    "datastore_records", metadata,
    Column("dataset", String(64), nullable=False),
    Column("key", String(200), nullable=False),
    # JSONB on PostgreSQL: compact, and indexable later (GIN or expression indexes).
    Column("data", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("version", Integer, nullable=False),       # 1 when created, +1 on every change
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("published_by", String(64), nullable=False),  # client id of the last change
    # (dataset, key) identifies a record and orders keyset pagination.
    PrimaryKeyConstraint("dataset", "key", name="pk_datastore_records"),
)

# How often a publish is retried when a concurrent one changed the same record
# between our read and our write (optimistic concurrency on `version`).
PUBLISH_ATTEMPTS = 5


class Conflict(RuntimeError):
    """The record kept changing under us; the caller may retry."""


@dataclass(frozen=True)
class Published:
    outcome: str   # created | updated | unchanged
    version: int


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._ready = False
        self._lock = threading.Lock()

    def ensure_table(self) -> None:
        """Create the table on first use. Several workers may race to do it: the
        loser's CREATE fails, and the table is then there, which is all we need."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                metadata.create_all(self.engine, tables=[records])
            except (OperationalError, ProgrammingError, IntegrityError):
                if not inspect(self.engine).has_table(records.name):
                    raise
            self._ready = True

    # -- writing -------------------------------------------------------------------
    def publish(self, dataset: str, key: str, record: dict[str, Any], client_id: str) -> Published:
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                result = self._publish_once(dataset, key, record, client_id)
            except IntegrityError:  # a concurrent publish created the record first
                continue
            if result is not None:
                return result
        raise Conflict(f"record {key!r} of {dataset!r} changed {PUBLISH_ATTEMPTS} times while being published")

    def _publish_once(self, dataset: str, key: str, record: dict[str, Any], client_id: str) -> Published | None:
        """Create, update or leave the record; None when someone else changed it meanwhile."""
        now = dt.datetime.now(dt.timezone.utc)
        with self.engine.begin() as conn:
            row = conn.execute(select(records.c.data, records.c.version).where(_pk(dataset, key))).first()
            if row is None:
                conn.execute(insert(records).values(
                    dataset=dataset, key=key, data=record, version=1, created_at=now, updated_at=now,
                    published_by=client_id,
                ))
                return Published("created", 1)
            if row.data == record:  # idempotent: the same record again changes nothing
                return Published("unchanged", row.version)
            changed = conn.execute(
                update(records)
                .where(_pk(dataset, key), records.c.version == row.version)
                .values(data=record, version=row.version + 1, updated_at=now, published_by=client_id)
            ).rowcount
        return Published("updated", row.version + 1) if changed == 1 else None

    # -- reading -------------------------------------------------------------------
    def get(self, dataset: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(select(records.c.data).where(_pk(dataset, key))).scalar_one_or_none()

    def query(self, dataset: str, conditions: Sequence[Condition], after: str | None,
              limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` records in key order, after the key `after` (keyset pagination)."""
        where = [records.c.dataset == dataset, *(_condition(c) for c in conditions)]
        if after is not None:
            where.append(records.c.key > after)
        stmt = select(records.c.key, records.c.data).where(and_(*where)).order_by(records.c.key).limit(limit)
        with self.engine.connect() as conn:
            return [(r.key, r.data) for r in conn.execute(stmt)]


def _pk(dataset: str, key: str) -> ColumnElement[bool]:
    return and_(records.c.dataset == dataset, records.c.key == key)


def _condition(cond: Condition) -> ColumnElement[bool]:
    """A filter on a field inside the JSON document, compared as the field's type.

    SQLAlchemy renders the path as json_extract() on SQLite and #>> on PostgreSQL.
    """
    element = records.c.data[cond.path[0] if len(cond.path) == 1 else cond.path]
    value = {
        "integer": element.as_integer, "number": element.as_float, "boolean": element.as_boolean,
    }.get(cond.kind, element.as_string)()
    if cond.op == "gte":
        return value >= cond.value
    if cond.op == "lte":
        return value <= cond.value
    return value == cond.value
