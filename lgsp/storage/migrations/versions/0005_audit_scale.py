"""Audit trail at province scale: indexes for every search filter; monthly partitions on PostgreSQL.

Every filter of the audit search gets a (column, at, id) index, so a page reads
one index range in time order whatever the filter. On SQLite the rowid is the
id and every index carries it, so (column, at) already is (column, at, id).

On PostgreSQL audit_records becomes a table partitioned by month on `at`: the
rows are copied as they are (same ids, same hashes, so every chain and seal
still verifies), into one partition per month they cover, the coming months and
a default partition. A partitioned table's keys must include `at`: the primary
key becomes (id, at) and the chain's uniqueness (chain, seq, at) — the verifier
reports a repeated seq as `inserted`. Nothing refers to audit record ids by
foreign key (bodies and seals refer to (chain, seq)).

The copy rewrites the table: on a large trail run it in a maintenance window
(benchmarks/access_report.py measures the copy rate; see docs/audit.md).

Revision ID: 0005
Revises: 0003
"""
import datetime as dt

from alembic import op
from sqlalchemy import text

from lgsp.storage import partitions

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

# name → columns, the time order appended (SQLite: (column, at); PostgreSQL: (column, at, id)).
BY_TIME = {
    "ix_audit_subject_at": "subject_hash", "ix_audit_client_at": "client_id", "ix_audit_officer_at": "officer",
    "ix_audit_service_at": "service", "ix_audit_purpose_at": "purpose", "ix_audit_outcome_at": "outcome",
    "ix_audit_kind_at": "kind",
}
NEW_ON_SQLITE = ("ix_audit_purpose_at", "ix_audit_outcome_at")
OLD_INDEXES = ("ix_audit_subject_at", "ix_audit_at", "ix_audit_client_at", "ix_audit_officer_at", "ix_audit_service_at",
               "ix_audit_request_id", "ix_audit_kind_at")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        for name in NEW_ON_SQLITE:
            op.create_index(name, "audit_records", [BY_TIME[name], "at"])
        return
    _partition(bind)


def _partition(bind) -> None:
    bind.execute(text("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE"))
    bind.execute(text("ALTER TABLE audit_records RENAME TO audit_records_plain"))
    bind.execute(text("ALTER SEQUENCE audit_records_id_seq OWNED BY NONE"))
    bind.execute(text("CREATE TABLE audit_records (LIKE audit_records_plain INCLUDING DEFAULTS) "
                      "PARTITION BY RANGE (at)"))
    first, last = bind.execute(text("SELECT min(at), max(at) FROM audit_records_plain")).one()
    now = dt.datetime.now(dt.timezone.utc)
    ahead = partitions.Month.of(now).start + dt.timedelta(days=31 * partitions.MONTHS_AHEAD)
    for month in partitions.months(min(first or now, now), max(last or now, ahead)):
        bind.execute(text(f"CREATE TABLE {month.name} PARTITION OF audit_records "
                          f"FOR VALUES FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"))
    partitions.create_default(bind)
    bind.execute(text("INSERT INTO audit_records SELECT * FROM audit_records_plain"))
    bind.execute(text("DROP TABLE audit_records_plain"))  # frees the index and constraint names
    bind.execute(text("ALTER SEQUENCE audit_records_id_seq OWNED BY audit_records.id"))
    _postgres_keys_and_indexes(bind)
    bind.execute(text("ANALYZE audit_records"))


def _postgres_keys_and_indexes(bind) -> None:
    bind.execute(text("ALTER TABLE audit_records ADD CONSTRAINT audit_records_pkey PRIMARY KEY (id, at)"))
    bind.execute(text("ALTER TABLE audit_records ADD CONSTRAINT uq_audit_chain_seq UNIQUE (chain, seq, at)"))
    bind.execute(text("CREATE INDEX ix_audit_at ON audit_records (at, id)"))
    bind.execute(text("CREATE INDEX ix_audit_request_id ON audit_records (request_id)"))
    for name, column in BY_TIME.items():
        bind.execute(text(f"CREATE INDEX {name} ON audit_records ({column}, at, id)"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        for name in NEW_ON_SQLITE:
            op.drop_index(name, "audit_records")
        return
    bind.execute(text("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE"))
    bind.execute(text("ALTER TABLE audit_records RENAME TO audit_records_partitioned"))
    bind.execute(text("ALTER SEQUENCE audit_records_id_seq OWNED BY NONE"))
    bind.execute(text("CREATE TABLE audit_records (LIKE audit_records_partitioned INCLUDING DEFAULTS)"))
    bind.execute(text("INSERT INTO audit_records SELECT * FROM audit_records_partitioned"))
    bind.execute(text("DROP TABLE audit_records_partitioned"))  # and its partitions
    bind.execute(text("ALTER SEQUENCE audit_records_id_seq OWNED BY audit_records.id"))
    bind.execute(text("ALTER TABLE audit_records ADD CONSTRAINT audit_records_pkey PRIMARY KEY (id)"))
    bind.execute(text("ALTER TABLE audit_records ADD CONSTRAINT uq_audit_chain_seq UNIQUE (chain, seq)"))
    columns = {"ix_audit_subject_at": "subject_hash, at", "ix_audit_at": "at", "ix_audit_client_at": "client_id, at",
               "ix_audit_officer_at": "officer, at", "ix_audit_service_at": "service, at",
               "ix_audit_request_id": "request_id", "ix_audit_kind_at": "kind, at"}
    for name in OLD_INDEXES:
        bind.execute(text(f"CREATE INDEX {name} ON audit_records ({columns[name]})"))
