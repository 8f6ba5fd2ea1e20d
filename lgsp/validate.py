"""Stage: validate input beyond the spec's shape checks (the spec checks shape;
this checks meaning), before any backend is called."""
from __future__ import annotations

from lgsp import personal_id
from lgsp.errors import ExchangeError
from lgsp.exchange import Exchange


def validate(ex: Exchange) -> None:
    value = ex.params.get("personal_id")
    if value is None:
        return
    try:
        personal_id.parse(value)
    except personal_id.PersonalIdError as exc:
        raise ExchangeError(exc.code, exc.detail) from None
