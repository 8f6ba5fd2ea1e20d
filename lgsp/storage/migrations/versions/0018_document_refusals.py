"""The inbound poller remembers the national axis's documents it refused, across restarts.

Revision ID: 0018
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_refusals",
        sa.Column("axis_doc_id", sa.String(length=128), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("axis_doc_id"),
    )


def downgrade() -> None:
    op.drop_table("document_refusals")
