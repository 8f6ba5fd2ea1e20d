"""Stage: validate input beyond the spec's shape checks (the spec checks shape;
this checks meaning), before any backend is called."""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import jsonschema

from lgsp import bulk, personal_id
from lgsp.adapter import Adapter
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext

# (adapter class, operation) → its parameters' validator: a few per adapter, built on first use.
_validators: dict[tuple[type[Adapter], str], jsonschema.Draft202012Validator | None] = {}


def _validator(adapter: Adapter, operation: str) -> jsonschema.Draft202012Validator | None:
    key = (type(adapter), operation)
    if key not in _validators:
        op = adapter.operations.get(operation)
        _validators[key] = jsonschema.Draft202012Validator(dict(op.params_schema)) if op and op.params_schema else None
    return _validators[key]


def _check_against_adapter(ex: Exchange) -> None:
    adapter = ex.adapter  # None: the invoke stage reports a broken connection as service.unavailable
    operation = ex.bound_service.operation
    if adapter is None or operation not in adapter.operations:
        return
    validator = _validator(adapter, operation)
    errors = sorted(validator.iter_errors(ex.params), key=str) if validator else []
    if errors:
        where = "/".join(map(str, errors[0].path)) or "parameters"
        raise ExchangeError("request.invalid", f"{where}: {errors[0].message}")


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_dates(params: dict[str, Any]) -> None:
    """A date the calendar does not have (1985-02-30) is refused here, not by the national side."""
    for name, value in params.items():
        if name.endswith("date") and isinstance(value, str) and _ISO_DATE.fullmatch(value):
            try:
                _dt.date.fromisoformat(value)
            except ValueError:
                raise ExchangeError("request.invalid", f"{name}: {value} is not a date of the calendar.") from None


# Control characters other than tab, CR and LF: XML cannot carry them, so a backend behind
# SOAP would answer a fault; no parameter of ours needs them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(params: dict[str, Any]) -> None:
    for name, value in params.items():
        if isinstance(value, str) and _CONTROL.search(value):
            raise ExchangeError("request.invalid", f"{name}: control characters are not allowed.")


async def validate(ex: Exchange, ctx: StageContext) -> None:
    if ex.check_params:
        _check_against_adapter(ex)
    check_text(ex.params)
    check_enterprise_code(ex.params.get("enterprise_code"))
    check_dates(ex.params)
    check_other_personal_ids(ex.params)
    if ex.bound_service.operation == bulk.SUBMIT_OPERATION:
        bulk.check_items(ex.params.get("items"))
    value = ex.params.get("personal_id")
    if value is None:
        return
    try:
        personal_id.parse(value)
    except personal_id.PersonalIdError as exc:
        raise ExchangeError(exc.code, exc.detail) from None


def check_other_personal_ids(params: dict[str, Any]) -> None:
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
