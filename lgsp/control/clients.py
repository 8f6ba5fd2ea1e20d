"""Clients as the token endpoint sees them: the stored row, and the scopes it may be granted
(its live grants' services plus its roles' scopes)."""
from __future__ import annotations

from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy import Engine, select

from lgsp import secret_check
from lgsp.control.roles import ROLE_SCOPES
from lgsp.storage.schema import clients
from lgsp.storage.schema import grants as grants_table


class OAuthClient(ClientMixin):
    """A client row as authlib sees it: client credentials only, scopes = granted services."""

    def __init__(self, row, granted: list[str]):
        self.row = row
        self.granted = granted

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return " ".join(self.granted) or None
        allowed = [s for s in scope.split() if s in self.granted]
        return " ".join(allowed) or None

    def check_redirect_uri(self, redirect_uri) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secret_check.check(client_secret, self.row.secret_hash)  # bounded pool, never unbounded CPU

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class UnknownClient(OAuthClient):
    """Stands in for a client id that does not exist (or is disabled): its secret check costs
    what a real one does and always fails, so the answer and its timing say nothing about the id."""

    def __init__(self, client_id: str):
        super().__init__(None, [])
        self.client_id = client_id

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return secret_check.check(client_secret, None)


def query_client(engine: Engine, client_id: str) -> OAuthClient | None:
    with engine.connect() as conn:
        row = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        if row is None or row.status != "active":
            return None
        granted = conn.execute(
            select(grants_table.c.service)
            .where(grants_table.c.client_id == client_id, grants_table.c.status == "active")
            .order_by(grants_table.c.service)
        ).scalars().all()
    role_scopes = [ROLE_SCOPES[r] for r in (row.roles or []) if r in ROLE_SCOPES]
    return OAuthClient(row, list(dict.fromkeys([*granted, *role_scopes])))
