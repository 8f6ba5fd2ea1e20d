"""Stage: validate input beyond the spec's shape checks (the spec checks shape;
this checks meaning), before any backend is called."""
from __future__ import annotations

import re
from functools import lru_cache

import jsonschema

from lgsp import bulk, personal_id
from lgsp.errors import ExchangeError
from lgsp.exchange import Exchange
from lgsp.registry import Registry


@lru_cache(maxsize=256)
def _validator(adapter_cls: type, operation: str) -> jsonschema.Draft202012Validator | None:
    op = adapter_cls.operations.get(operation)
    return jsonschema.Draft202012Validator(dict(op.params_schema)) if op and op.params_schema else None


def _check_against_adapter(ex: Exchange, registry: Registry) -> None:
    try:
        adapter = registry.adapter(ex.service.connection)
    except Exception:
        return  # the invoke stage reports a broken connection as service.unavailable
    if adapter is None or ex.service.operation not in adapter.operations:
        return
    validator = _validator(type(adapter), ex.service.operation)
    errors = sorted(validator.iter_errors(ex.params), key=str) if validator else []
    if errors:
        where = "/".join(map(str, errors[0].path)) or "parameters"
        raise ExchangeError("request.invalid", f"{where}: {errors[0].message}")


def validate(ex: Exchange, registry: Registry | None = None) -> None:
    if ex.check_params and registry is not None:
        _check_against_adapter(ex, registry)
    check_enterprise_code(ex.params.get("enterprise_code"))
    check_other_personal_ids(ex.params)
    if ex.service is not None and ex.service.operation == bulk.SUBMIT_OPERATION:
        bulk.check_items(ex.params.get("items"))
    value = ex.params.get("personal_id")
    if value is None:
        return
    try:
        personal_id.parse(value)
    except personal_id.PersonalIdError as exc:
        raise ExchangeError(exc.code, exc.detail) from None


def check_other_personal_ids(params: dict) -> None:
    """Refuse a malformed ID of another person (head_personal_id, relative_personal_id, ...),
    naming the field, so the caller knows which of the two IDs is wrong."""
    for key in sorted(params):
        if not key.endswith("_personal_id"):
            continue
        try:
            personal_id.parse(params[key])
        except personal_id.PersonalIdError as exc:
            raise ExchangeError(exc.code, f"{key}: {exc.detail}") from None


# An enterprise code: 10 digits; a branch adds "-" and 3 digits (0101234565-001).
_ENTERPRISE_CODE = re.compile(r"[0-9]{10}(-[0-9]{3})?")


def check_enterprise_code(value: object) -> None:
    """Refuse a malformed enterprise code before the business registry is called."""
    if value is None:
        return
    if not isinstance(value, str) or not _ENTERPRISE_CODE.fullmatch(value):
        raise ExchangeError(
            "enterprise_code.malformed",
            "An enterprise code is 10 digits, or 10 digits, '-' and 3 digits for a branch (0101234565-001).",
        )
