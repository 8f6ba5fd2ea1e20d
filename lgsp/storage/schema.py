"""Tables, as SQLAlchemy Core: the hot path uses prebuilt statements, not the ORM.

Schema changes go through Alembic (lgsp/storage/migrations); this module is
the model the migrations are checked against in tests.
"""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

clients = Table(
    "clients", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("agency_code", String(64)),       # QCVN 102 agency identifier, e.g. 000.00.00.H30
    Column("agency_name", String(200)),
    Column("secret_hash", String(255), nullable=False),
    Column("status", String(16), nullable=False, default="active"),  # active | disabled
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Roles beyond calling shared APIs, each granting a scope: auditor → audit.read, …
    Column("roles", JSON, nullable=False, default=list),
)

connections = Table(
    "connections", metadata,
    Column("name", String(64), primary_key=True),
    Column("adapter", String(64), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("protection", JSON, nullable=True),   # upstream protection policy (lgsp.traffic); NULL: defaults
)

services = Table(
    "services", metadata,
    Column("name", String(128), primary_key=True),   # e.g. population.citizen.get
    Column("version", String(16), nullable=False),
    Column("connection", String(64), nullable=False),
    Column("operation", String(64), nullable=False),  # the adapter's operation
    Column("personal_data", Boolean, nullable=False, default=True),
    Column("description", Text),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # What of the payload the audit trail keeps: off | metadata | full (encrypted).
    Column("body_logging", String(16), nullable=False, default="off"),
)

grants = Table(
    "grants", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(64), nullable=False),
    Column("service", String(128), nullable=False),
    Column("allowed_fields", JSON, nullable=False),
    Column("allowed_purposes", JSON, nullable=False),
    Column("status", String(16), nullable=False, default="active"),  # active | revoked
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Index("ix_grants_client_service", "client_id", "service"),
)

signing_keys = Table(
    "signing_keys", metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_key", Text, nullable=False),   # encrypted with a key derived from the master secret
    Column("public_jwk", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # active | retired
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True)),
)

# A single row whose counter moves on every configuration change, so that each
# worker notices changes with one cheap query instead of re-reading everything.
config_state = Table(
    "config_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

audit_records = Table(
    "audit_records", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # Hash chain: one chain per gateway instance, so replicas never share a lock.
    Column("chain", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),       # exchange | admin
    Column("request_id", String(64)),
    Column("door", String(8)),                        # rest | soap
    Column("client_id", String(64)),
    Column("agency_code", String(64)),
    Column("officer", String(128)),
    Column("purpose", String(64)),
    Column("service", String(128)),
    Column("outcome", String(16), nullable=False),    # ok | refused | failed
    Column("status", Integer),
    Column("error_code", String(64)),
    Column("latency_ms", Float),
    Column("fields", JSON),                           # canonical fields returned
    Column("subject_hash", String(64)),               # keyed hash of the personal ID, never the ID
    Column("upstream", String(255)),
    Column("trace_id", String(128)),
    Column("request_bytes", Integer),
    Column("response_bytes", Integer),
    Column("response_sha256", String(64)),
    Column("detail", JSON),                           # admin actions: who/what/before/after
    # PostgreSQL (migration 0005): partitioned by month on `at`, so its keys include `at`:
    # primary key (id, at), unique (chain, seq, at).
    UniqueConstraint("chain", "seq", name="uq_audit_chain_seq"),
    # One index per search filter, in time order: a page reads one index range (audit_search).
    # SQLite builds them as (column, at): the rowid (= id) ends every index entry anyway.
    Index("ix_audit_subject_at", "subject_hash", "at", "id"),
    Index("ix_audit_at", "at", "id"),
    Index("ix_audit_client_at", "client_id", "at", "id"),
    Index("ix_audit_officer_at", "officer", "at", "id"),
    Index("ix_audit_service_at", "service", "at", "id"),
    Index("ix_audit_purpose_at", "purpose", "at", "id"),
    Index("ix_audit_outcome_at", "outcome", "at", "id"),
    Index("ix_audit_kind_at", "kind", "at", "id"),
    Index("ix_audit_request_id", "request_id"),
)

# Seals: a chain head signed (Ed25519) at intervals, so that later edits,
# deletions and truncation are detectable even by someone who can rewrite hashes.
audit_seals = Table(
    "audit_seals", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("chain", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),          # the last record covered
    Column("head_hash", String(64), nullable=False),    # that record's hash
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kid", String(64), nullable=False),
    Column("signature", String(128), nullable=False),   # hex Ed25519 signature of the seal message
    Column("reason", String(16), nullable=False),       # start | interval | shutdown | retention
    Index("ix_audit_seals_chain_seq", "chain", "seq"),
)

# Ed25519 keys that sign seals. Retired keys stay, so old seals keep verifying.
audit_keys = Table(
    "audit_keys", metadata,
    Column("kid", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),   # hex raw Ed25519 public key
    Column("private_key", Text, nullable=False),        # encrypted with a key derived from the master secret
    Column("status", String(16), nullable=False),       # active | retired
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True)),
)

# Where each chain starts after retention removed its oldest records.
audit_chain_bases = Table(
    "audit_chain_bases", metadata,
    Column("chain", String(64), primary_key=True),
    Column("base_seq", BigInteger, nullable=False),     # the last removed record
    Column("base_hash", String(64), nullable=False),    # its hash: the next record's prev_hash
    Column("archive", String(255)),                     # the archive file that holds what was removed
    Column("at", DateTime(timezone=True), nullable=False),
)

# Payloads of exchanges whose service logs bodies in full: encrypted at rest,
# outside the hash chain (the record holds the response's SHA-256).
audit_bodies = Table(
    "audit_bodies", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("chain", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ciphertext", Text, nullable=False),
    Index("ix_audit_bodies_chain_seq", "chain", "seq"),
)

# Console sign-ins, so that signing out ends a session on the server: the cookie
# names a session by a random id (only its SHA-256 is stored); a page is served
# only while the row exists and has not ended.
console_sessions = Table(
    "console_sessions", metadata,
    Column("id", String(64), primary_key=True),          # SHA-256 hex of the session id in the cookie
    Column("client_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)

# Bulk verifications (lgsp.bulk): one row per list a client submitted. The result is
# encrypted at rest and removed after the retention time (`expires_at`).
bulk_jobs = Table(
    "bulk_jobs", metadata,
    Column("id", String(36), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("service", String(128), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("purpose", String(64)),
    Column("officer", String(128)),
    Column("status", String(16), nullable=False),        # pending | done | failed
    Column("item_count", Integer, nullable=False),
    Column("upstream_handle", String(128)),
    Column("allowed_fields", JSON, nullable=False),
    Column("result", Text),                               # Fernet ciphertext of the items' outcomes
    Column("error_code", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_bulk_jobs_expires_at", "expires_at"),
)

# Traffic policies (lgsp.traffic): rate and quota per client, per client × service, and a
# connection's national daily quota shared by all clients (with a share per client).
# `target` names what the policy limits: client:<id>, client:<id>/service:<name>, connection:<name>.
traffic_policies = Table(
    "traffic_policies", metadata,
    Column("target", String(256), primary_key=True),
    Column("client_id", String(64)),
    Column("service", String(128)),
    Column("connection", String(64)),
    Column("rate_per_second", Float),
    Column("burst", Integer),
    Column("per_day", BigInteger),
    Column("per_month", BigInteger),
    Column("shares", JSON, nullable=False, default=dict),   # connection only: client → daily share
    Column("on_store_failure", String(8), nullable=False, default="open"),  # open | closed
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Certificate-bound clients and address allow-lists (lgsp.tls.binding), one row per client that
# has either. `method` is an RFC 8705 client authentication method, or NULL for an address list only.
client_bindings = Table(
    "client_bindings", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("method", String(40)),                         # tls_client_auth | self_signed_tls_client_auth
    Column("subject_dn", String(1000)),                   # tls_client_auth: RFC 4514, normalised
    Column("certificate", Text),                          # self_signed_tls_client_auth: the PEM registered
    Column("thumbprint", String(64)),                     # its x5t#S256
    Column("allowed_networks", JSON, nullable=False),     # CIDRs; empty: from anywhere
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The agency directory of the document exchange axis (lgsp.documents.agencies): the province's own
# agencies ("local", with the client id of their document system) and the national axis's ("national").
agencies = Table(
    "agencies", metadata,
    Column("code", String(13), primary_key=True),        # QCVN 102: NNN.NN.NN.XNN, e.g. 000.00.31.H30
    Column("name", String(300), nullable=False),
    Column("parent_code", String(13)),
    Column("email", String(200)),
    Column("phone", String(50)),
    Column("fax", String(50)),
    Column("scope", String(16), nullable=False),          # local | national
    Column("client_id", String(64)),                      # the agency's document system (local agencies)
    Column("source", String(32), nullable=False),         # admin | apply | national-axis (who wrote it last)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_agencies_client_id", "client_id"),
)

# -- store-and-forward delivery (lgsp.delivery, migration 0014) ----------------------------
PENDING_SQL = "status IN ('accepted', 'delivering', 'failed')"  # the states a claim looks at
delivery_messages = Table(
    "delivery_messages", metadata,
    # Position in the queue: a key's messages are delivered in this order.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),   # the message id the sender is given
    Column("client_id", String(64), nullable=False),
    Column("service", String(128), nullable=False),
    Column("destination", String(64), nullable=False),       # the connection it is delivered through
    Column("operation", String(64), nullable=False),
    Column("msg_key", String(128), nullable=False),          # ordering key (e.g. the dossier number)
    Column("request_id", String(64), nullable=False),
    Column("purpose", String(64)),
    Column("officer", String(128)),
    Column("agency_code", String(64)),
    Column("payload", Text, nullable=False),                 # Fernet ciphertext of the params
    # accepted | delivering | failed (will retry) | delivered | dead | cancelled
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),   # the maximum age: dead after it
    Column("lease_owner", String(64)),
    Column("lease_until", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("error_code", String(64)),
    Column("reason", Text),
    Column("answer", JSON),                                  # the destination's answer once delivered
    Column("callback_url", String(512)),
    Column("callback_state", String(16)),                    # pending | sent | failed
    Column("callback_attempts", Integer, nullable=False, default=0, server_default="0"),  # callback tries so far
    Column("callback_next_at", DateTime(timezone=True)),     # a pending callback is not tried before this
    Index("ix_delivery_due", "status", "next_attempt_at"),
    Index("ix_delivery_key_seq", "msg_key", "seq"),
    Index("ix_delivery_callback", "callback_state", "callback_next_at"),
    # Partial (migration 0019): a claim reads the pending rows in queue order, not the delivered ones.
    Index("ix_delivery_pending", "seq", postgresql_where=text(PENDING_SQL), sqlite_where=text(PENDING_SQL)),
)

# What makes a second acceptance the first one: an Idempotency-Key, or the key + version.
delivery_dedupe = Table(
    "delivery_dedupe", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("dedupe_key", String(200), primary_key=True),
    Column("message_id", String(36), nullable=False),
)

# The delivery log: one row per attempt, written when the attempt starts and finished with its outcome.
delivery_attempts = Table(
    "delivery_attempts", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(36), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", String(16)),                           # delivered | retry | dead | abandoned
    Column("error_code", String(64)),
    Column("reason", Text),
    Column("latency_ms", Float),
    UniqueConstraint("message_id", "attempt", name="uq_delivery_attempt"),
)
