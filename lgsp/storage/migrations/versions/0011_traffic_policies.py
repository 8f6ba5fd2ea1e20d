"""Traffic policies: rate limits and quotas per client, client × service and connection.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "traffic_policies",
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("service", sa.String(length=128), nullable=True),
        sa.Column("connection", sa.String(length=64), nullable=True),
        sa.Column("rate_per_second", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("per_day", sa.BigInteger(), nullable=True),
        sa.Column("per_month", sa.BigInteger(), nullable=True),
        sa.Column("shares", sa.JSON(), nullable=False),
        sa.Column("on_store_failure", sa.String(length=8), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )


def downgrade() -> None:
    op.drop_table("traffic_policies")
