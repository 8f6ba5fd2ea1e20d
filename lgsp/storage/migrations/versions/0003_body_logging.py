"""Per-service body logging (off / metadata / full, encrypted at rest).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch_op:
        batch_op.add_column(sa.Column("body_logging", sa.String(length=16), nullable=False, server_default="off"))
    op.create_table(
        "audit_bodies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_bodies_chain_seq", "audit_bodies", ["chain", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_bodies_chain_seq", "audit_bodies")
    op.drop_table("audit_bodies")
    with op.batch_alter_table("services") as batch_op:
        batch_op.drop_column("body_logging")
