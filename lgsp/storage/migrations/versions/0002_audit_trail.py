"""Audit trail: seals, seal-signing keys, chain bases after retention; client roles.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch_op:
        batch_op.add_column(sa.Column("roles", sa.JSON(), nullable=False, server_default="[]"))
    op.create_table(
        "audit_seals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_seals_chain_seq", "audit_seals", ["chain", "seq"])
    op.create_table(
        "audit_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_table(
        "audit_chain_bases",
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("base_seq", sa.BigInteger(), nullable=False),
        sa.Column("base_hash", sa.String(length=64), nullable=False),
        sa.Column("archive", sa.String(length=255), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain"),
    )
    with op.batch_alter_table("audit_records") as batch_op:
        # Search for auditors: by officer, by service, by outcome over time.
        batch_op.create_index("ix_audit_officer_at", ["officer", "at"])
        batch_op.create_index("ix_audit_service_at", ["service", "at"])
        batch_op.create_index("ix_audit_request_id", ["request_id"])
        batch_op.create_index("ix_audit_kind_at", ["kind", "at"])


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch_op:
        batch_op.drop_index("ix_audit_kind_at")
        batch_op.drop_index("ix_audit_request_id")
        batch_op.drop_index("ix_audit_service_at")
        batch_op.drop_index("ix_audit_officer_at")
    op.drop_table("audit_chain_bases")
    op.drop_table("audit_keys")
    op.drop_table("audit_seals")
    with op.batch_alter_table("clients") as batch_op:
        batch_op.drop_column("roles")
