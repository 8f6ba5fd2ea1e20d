"""What a node checks before it serves: that it understands the database it was pointed at.

Several nodes share one database. A node of an older release must not serve a
schema a newer release migrated (it would write rows the others misread), and
a node given another master secret cannot read the shared keys (every token it
signed and every seal it wrote would be worthless): both refuse to start with a
sentence that says what to do.
"""
from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography.fernet import InvalidToken
from sqlalchemy import Engine, inspect, select

from lgsp.crypto import fernet
from lgsp.storage.db import MIGRATIONS
from lgsp.storage.schema import audit_keys, signing_keys


class StartupRefusal(Exception):
    """The node must not start; the message says why and what to do."""


def check_database(engine: Engine) -> None:
    check_schema_version(engine)
    check_master_secret(engine)


def check_schema_version(engine: Engine) -> None:
    if "audit_records" not in inspect(engine).get_table_names():
        raise StartupRefusal("The database has no LGSP schema yet: run `lgsp db upgrade` (or serve --migrate).")
    script = ScriptDirectory(str(MIGRATIONS))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    newer = [rev for rev in current if rev not in known]
    if newer:
        raise StartupRefusal(
            f"The database schema is at version {', '.join(newer)}, newer than this LGSP knows "
            f"(up to {', '.join(script.get_heads())}): another node of a newer release migrated it. "
            "Run this node with that release; do not downgrade the database under running nodes.")
    if set(current) != set(script.get_heads()):
        raise StartupRefusal(
            f"The database schema is at version {', '.join(current) or 'none'}, older than this LGSP "
            f"({', '.join(script.get_heads())}): run `lgsp db upgrade` (or serve --migrate).")


def check_master_secret(engine: Engine) -> None:
    """The keys in the database were encrypted under a master secret: it must be this node's."""
    with engine.connect() as conn:
        rows = [*conn.execute(select(signing_keys.c.kid, signing_keys.c.private_key)
                              .where(signing_keys.c.status == "active")),
                *conn.execute(select(audit_keys.c.kid, audit_keys.c.private_key)
                              .where(audit_keys.c.status == "active"))]
    box = fernet()
    for kid, private_key in rows:
        try:
            box.decrypt(private_key.encode())
        except InvalidToken:
            raise StartupRefusal(
                f"This node cannot read key {kid} in the database: its LGSP_SECRET_KEY is not the master "
                "secret the database's keys were made with. Give every node the same LGSP_SECRET_KEY "
                "(restore it from the backup of the master secret).") from None
