"""The document exchange axis: stored edXML packages (in chunks), and their routes per recipient.

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_packages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sender", sa.String(length=13), nullable=False),
        sa.Column("doc_ref", sa.String(length=128), nullable=True),
        sa.Column("response_for", sa.String(length=128), nullable=True),
        sa.Column("status_code", sa.String(length=8), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("axis_doc_id", sa.String(length=128), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("sent_sha256", sa.String(length=64), nullable=False),
        sa.Column("signer", sa.JSON(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("axis_doc_id", name="uq_document_packages_axis_doc_id"),
    )
    op.create_index("ix_document_packages_doc_ref", "document_packages", ["doc_ref"])
    op.create_table(
        "document_chunks",
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("package_id", "seq"),
    )
    op.create_table(
        "document_routes",
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=13), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("inbox_state", sa.String(length=16), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_code", sa.String(length=8), nullable=True),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("package_id", "recipient"),
    )
    op.create_index("ix_document_routes_inbox", "document_routes", ["recipient", "inbox_state"])


def downgrade() -> None:
    op.drop_index("ix_document_routes_inbox", "document_routes")
    op.drop_table("document_routes")
    op.drop_table("document_chunks")
    op.drop_index("ix_document_packages_doc_ref", "document_packages")
    op.drop_table("document_packages")
