"""Stage: authorize — the grant (client × service) and the stated purpose.

Deny unless granted: the token must carry the service's scope *and* a live
grant must exist (revoking a grant takes effect before the token expires).
"""
from __future__ import annotations

from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext

# Where each door carries the purpose: callers are told in their own protocol's terms.
PURPOSE_CARRIER = {"rest": "the X-Purpose header", "soap": "the <purpose> element of the request"}


def missing_purpose_sentence(door: str | None) -> str:
    carrier = PURPOSE_CARRIER.get(door or "rest", PURPOSE_CARRIER["rest"])
    return f"This service returns personal data: state the purpose in {carrier}."


async def authorize(ex: Exchange, ctx: StageContext) -> None:
    service, client_id = ex.bound_service, ex.bound_client.client_id
    grant = ctx.snap.grants.get((client_id, service.name))
    if grant is None or service.name not in ex.bound_identity.scopes:
        raise ExchangeError(
            "access.no_grant",
            f"Client '{client_id}' has no grant for service '{service.name}'"
            + ("." if grant is None else "; request a token with this scope."),
        )
    ex.grant = grant
    if not service.personal_data:
        return
    if not ex.purpose:
        raise ExchangeError("purpose.missing", missing_purpose_sentence(ex.door))
    if ex.purpose not in grant.allowed_purposes:
        allowed = ", ".join(sorted(grant.allowed_purposes))
        raise ExchangeError("purpose.not_allowed",
                            f"Purpose '{ex.purpose}' is not allowed by the grant; allowed: {allowed}.")
