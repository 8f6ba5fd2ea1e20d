"""Storage: SQLAlchemy 2 Core tables and Alembic migrations."""
from lgsp.storage.db import engine_for, upgrade
from lgsp.storage import schema

__all__ = ["engine_for", "upgrade", "schema"]
