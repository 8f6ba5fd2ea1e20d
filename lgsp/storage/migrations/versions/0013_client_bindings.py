"""Certificate-bound clients (RFC 8705) and per-client address allow-lists.

Revision ID: 0013
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "client_bindings",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=40), nullable=True),
        sa.Column("subject_dn", sa.String(length=1000), nullable=True),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.Column("thumbprint", sa.String(length=64), nullable=True),
        sa.Column("allowed_networks", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )


def downgrade() -> None:
    op.drop_table("client_bindings")
