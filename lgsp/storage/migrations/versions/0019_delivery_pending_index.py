"""The delivery queue's pending messages in an index of their own (partial: only accepted, delivering
and failed rows), so a claim reads the few pending rows in queue order instead of walking past
every delivered one.

Revision ID: 0019
Revises: 0018
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

PENDING = sa.text("status IN ('accepted', 'delivering', 'failed')")


def upgrade() -> None:
    op.create_index("ix_delivery_pending", "delivery_messages", ["seq"],
                    postgresql_where=PENDING, sqlite_where=PENDING)


def downgrade() -> None:
    op.drop_index("ix_delivery_pending", table_name="delivery_messages")
