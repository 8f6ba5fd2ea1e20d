"""Storage: SQLAlchemy 2 Core tables and Alembic migrations."""
from lgsp.storage import schema
from lgsp.storage.db import engine_for, upgrade

__all__ = ["engine_for", "upgrade", "schema"]
