"""Delivery callbacks are retried: how many tries so far, and when the next one is due (indexed).

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_messages") as batch:
        batch.add_column(sa.Column("callback_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True))
    # Workers look for pending callbacks every few seconds: not by reading the whole queue.
    op.create_index("ix_delivery_callback", "delivery_messages", ["callback_state", "callback_next_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_callback", table_name="delivery_messages")
    with op.batch_alter_table("delivery_messages") as batch:
        batch.drop_column("callback_next_at")
        batch.drop_column("callback_attempts")
