"""Console sessions held on the server (sign-out ends them), and connection headers
encrypted at rest like writeOnly settings.

Revision ID: 0008
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    _seal_headers()


def _seal_headers() -> None:
    """Headers stored in clear before this revision (they carry API keys) are encrypted now."""
    from lgsp.connection_secrets import sealed as _sealed

    connections = sa.table("connections", sa.column("name", sa.String), sa.column("settings", sa.JSON))
    conn = op.get_bind()
    for name, settings in conn.execute(sa.select(connections.c.name, connections.c.settings)).all():
        headers = (settings or {}).get("headers")
        if not isinstance(headers, dict) or not headers:
            continue
        sealed = {k: _sealed(v, None) for k, v in headers.items()}
        if sealed != headers:
            conn.execute(sa.update(connections).where(connections.c.name == name)
                         .values(settings={**settings, "headers": sealed}))


def downgrade() -> None:
    op.drop_table("console_sessions")
